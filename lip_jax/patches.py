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

from lip_jax.windows import Padding, float_array, pool_window


PADDING_MODES = ("exclude", "zeros", "reflect", "replicate")
_NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}


def window_patches(inputs, window_shape, strides=None, padding: Padding = "VALID",
                   ceil_mode: bool = False, padding_mode: str = "exclude"):
    """Every window of `inputs` along a new axis.

    `inputs` `(*batch, *spatial, C)` -> `(patches, mask)`: patches
    `(*batch, *pooled_spatial, K, C)` in the compute dtype (float32, float64 for float64
    inputs) and mask `(*pooled_spatial, K, 1)`, with `K = prod(window_shape)` offsets in
    row-major order. `padding_mode` "exclude" masks padding out (0, LAN's rule); "zeros",
    "reflect" and "replicate" fill it as PyTorch's padding modes do and count it (1).
    What `ceil_mode` adds beyond the padding is always masked out.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    x = float_array("inputs", inputs)
    window = pool_window(x.shape, window_shape, strides, padding, ceil_mode=ceil_mode)
    lead = x.ndim - len(window_shape) - 1
    ones = jnp.ones(x.shape[lead:-1] + (1,), jnp.promote_types(x.dtype, jnp.float32))
    x = x.astype(ones.dtype)
    if padding_mode != "exclude":  # fill and count the padding, then pad what ceil adds
        base = pool_window(x.shape, window_shape, strides, padding)
        if padding_mode == "reflect":
            _check_reflect(x.shape, base, lead)
        x = jnp.pad(x, base.pads, _NUMPY_MODES[padding_mode])
        ones = jnp.pad(ones, base.pads[lead:], constant_values=1)
        window = window._replace(pads=tuple((0, hi - b_hi) for (_, hi), (_, b_hi)
                                            in zip(window.pads, base.pads)))
    x = jnp.pad(x, window.pads)
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


def _check_reflect(shape, window, lead: int):
    for axis, (lo, hi) in enumerate(window.pads[lead:-1]):
        if max(lo, hi) >= shape[lead + axis]:
            raise ValueError(f"reflect padding ({lo}, {hi}) needs spatial dim {axis} longer "
                             f"than the padding; it has size {shape[lead + axis]}")


def patch_mean(patches: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_k w x / sum_k w` over the offset axis (-2): `(..., K, C)` -> `(..., C)`."""
    return jnp.sum(weights * patches, axis=-2) / jnp.sum(weights, axis=-2)
