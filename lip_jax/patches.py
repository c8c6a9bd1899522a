"""Pooling windows as an explicit axis, for poolings whose weights depend on the window.

LAN with per-pixel weights is two window sums (`lip_jax.ops.lan_pool`); when a pixel's
weight also depends on the window it is pooled in (its place in the window, as in
BlurPool, or the window's mean, as in DPP), the windows are gathered as strided slices,
one per window offset, and the weighted mean runs over that offset axis.
"""

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from lip_jax.windows import Padding, pool_window


def window_patches(inputs, window_shape, strides=None, padding: Padding = "VALID"):
    """Every window of `inputs` along a new axis.

    `inputs` `(*batch, *spatial, C)` -> `(patches, mask)`: patches
    `(*batch, *pooled_spatial, K, C)` in the compute dtype (float32, float64 for float64
    inputs) and mask `(*pooled_spatial, K, 1)`, 1 for in-image pixels and 0 for padding,
    with `K = prod(window_shape)` offsets in row-major order.
    """
    x = jnp.asarray(inputs)
    window = pool_window(x.shape, window_shape, strides, padding)
    lead = x.ndim - len(window_shape) - 1
    ones = jnp.ones(x.shape[lead:-1] + (1,), jnp.promote_types(x.dtype, jnp.float32))
    x = jnp.pad(x.astype(ones.dtype), window.pads)
    ones = jnp.pad(ones, window.pads[lead:])
    spatial = range(lead, lead + len(window_shape))
    out = [(x.shape[a] - window.dims[a]) // window.strides[a] + 1 for a in spatial]

    def take(a, offset):  # the strided slice of every window's pixel at `offset`
        start = [0] * a.ndim
        limit = list(a.shape)
        step = [1] * a.ndim
        first = a.ndim - len(window_shape) - 1
        for i, (o, n, s) in enumerate(zip(offset, out, window.strides[lead:])):
            start[first + i], limit[first + i], step[first + i] = o, o + (n - 1) * s + 1, s
        return lax.slice(a, start, limit, step)

    offsets = list(itertools.product(*(range(k) for k in window_shape)))
    patches = jnp.stack([take(x, o) for o in offsets], axis=-2)
    mask = jnp.stack([take(ones, o) for o in offsets], axis=-2)
    return patches, mask


def patch_mean(patches: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_k w x / sum_k w` over the offset axis (-2): `(..., K, C)` -> `(..., C)`."""
    return jnp.sum(weights * patches, axis=-2) / jnp.sum(weights, axis=-2)
