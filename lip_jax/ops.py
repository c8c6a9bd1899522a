"""Pooling as Local Aggregation and Normalisation (LAN), and LIP.

Every pooling here is a weighted mean over each window:

    out[p] = sum_{q in window(p)} w[q] * x[q]  /  sum_{q in window(p)} w[q]

computed as two `lax.reduce_window` sums. Padded positions have weight 0, so the
mean runs over the in-image pixels of a window only. Average pooling is w = 1,
SoftPool w = exp(x), max pooling the limit w = exp(beta * x), beta -> inf, strided
subsampling a one-hot w at the window origins, and LIP w = exp(logits) with logits
from a learned network ending in `soft_gate`.

Layout is channels-last as in `flax.linen.pool`: inputs `(*batch, *spatial, features)`
with `len(window_shape)` spatial dims and any number of leading batch dims.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp

from lip_jax import lip_xla
from lip_jax.lip_xla import FAST_LOGIT_RANGE
from lip_jax.sharded import per_shard
from lip_jax.windows import (Padding, Window, compute_dtype, flag, float_array, pool_window,
                             positive_ints, spatial_axes, window_sum,
                             window_sum_transpose)


def _align(inputs, weights, name: str) -> tuple[jax.Array, jax.Array, int]:
    """Checks dtypes and broadcasting; splits features into groups for grouped weights.

    Returns (inputs, weights, feature_ndim). Weights of shape (..., G) with G dividing the
    C features of the inputs (1 < G < C) are grouped: each run of C // G consecutive
    features shares one weight; inputs become (..., G, C // G) and weights (..., G, 1).
    """
    inputs = float_array("inputs", inputs)
    weights = float_array(name, weights, compute_dtype(inputs.dtype))
    c = inputs.shape[-1] if inputs.ndim else 1
    g = weights.shape[-1] if weights.ndim else 1
    if weights.ndim and 1 < g < c and c % g == 0:
        inputs = inputs.reshape(*inputs.shape[:-1], g, c // g)
        weights = weights[..., None]
        feature_ndim = 2
    else:
        feature_ndim = 1
    try:
        shape = jnp.broadcast_shapes(weights.shape, inputs.shape)
    except ValueError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(
            f"{name} of shape {weights.shape} do not broadcast to inputs of shape "
            f"{inputs.shape} (per feature, shared, or grouped over features)")
    return inputs, weights, feature_ndim


def _merge_features(out: jax.Array, feature_ndim: int) -> jax.Array:
    """Undoes `_align`'s split of grouped features (also for zero-size arrays)."""
    lead = out.shape[:out.ndim - feature_ndim]
    return out.reshape(*lead, math.prod(out.shape[len(lead):]))


def lan_pool(inputs, weights, window_shape, strides=None, padding: Padding = "VALID", *,
             ceil_mode: bool = False):
    """Weighted mean of `inputs` over each window, `sum(w * x) / sum(w)`.

    Args:
      inputs: `(*batch, *spatial, features)` floats.
      weights: non-negative, broadcastable to `inputs` (or grouped, see `lip_pool`);
        integers and bools are taken as floats. Every window needs a positive weight
        sum, else its output is NaN.
      window_shape: one int per spatial dim.
      strides: one int per spatial dim; default 1.
      padding: "VALID", "SAME" or `(low, high)` per spatial dim; padding has weight 0.
      ceil_mode: round the output size up as PyTorch's pools do (the extra windows
        reach past the padding, which has weight 0 too).
    Returns:
      `(*batch, *pooled_spatial, features)` in the dtype of `inputs`, summed in float32
      (float64 for float64 inputs). Differentiated by autodiff.
    """
    x, w, feature_ndim = _align(inputs, weights, "weights")
    window = pool_window(x.shape, window_shape, strides, padding, feature_ndim, ceil_mode)
    ct = compute_dtype(x.dtype)
    x, w = x.astype(ct), jnp.broadcast_to(w.astype(ct), x.shape)
    out = window_sum(w * x, window) / window_sum(w, window)
    return _merge_features(out, feature_ndim).astype(inputs.dtype)


Implementation = str | None
IMPLEMENTATIONS = ("xla", "pallas", "pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu")


def lip_pool(inputs, logits, window_shape, strides=None, padding: Padding = "VALID",
             implementation: Implementation = None, *, ceil_mode: bool = False,
             logit_bounds: tuple[float, float] | None = None):
    """Local importance pooling: `lan_pool(inputs, exp(logits), ...)` with exact
    derivatives.

    The official `lip2d(x, l, k, s, p)` (NCHW) equals
    `lip_pool(x, l, (k, k), (s, s), ((p, p), (p, p)))` (NHWC).

    Args:
      inputs: `(*batch, *spatial, features)` floats.
      logits: broadcastable to `inputs`: per feature `(..., C)`, shared `(..., 1)`, or
        grouped `(..., G)` with `G` dividing `C` (features `g*C/G .. (g+1)*C/G - 1`
        share logit `g`); integer logits are taken as floats.
      window_shape, strides, padding, ceil_mode: as in `lan_pool`.
      implementation: "xla" (`lip_jax.lip_xla`: any rank, forward and reverse mode),
        "pallas_gpu" (`lip_jax.pallas_gpu`, Triton), "pallas_mosaic_gpu"
        (`lip_jax.pallas_mosaic_gpu`, Mosaic GPU) or "pallas_tpu"
        (`lip_jax.pallas_tpu`, Mosaic): fused kernels for 2-D windows (other ranks take
        "xla"), reverse mode only (to any order: beyond the first, the derivatives
        are the XLA graph's), compiled on their backend and run in Pallas
        interpret mode on CPU; "pallas" is the running backend's kernel (on a GPU and
        on CPU the Triton one); None: the backend's `DEFAULT_IMPLEMENTATION`, or with
        `logit_bounds` its `DEFAULT_BOUNDED_IMPLEMENTATION` ("xla" where absent).
      logit_bounds: `(low, high)`, Python numbers with `high - low < FAST_LOGIT_RANGE`:
        a promise that every logit lies in `[low, high]`, as `soft_gate`'s do in
        `[0, coeff]` (`lip_jax.linen.LIP` passes its logit module's `logit_bounds`).
        The XLA graph then takes its fast form for every image, skipping the per-image
        statistics and the `lax.cond`; the kernels ignore it. Nothing checks the
        promise: where an image's logit range exceeds ~87 (float32), windows whose
        weights all underflow give NaN, and a NaN or inf logit makes its image's output
        NaN (without bounds: only its windows').
    Returns:
      `(*batch, *pooled_spatial, features)` in the dtype of `inputs`.

    Numerics (`lip_jax.lip_xla`, `lip_jax.lip_kernel`): sums run in float32 (float64 for
    float64 inputs); the result and both gradients are exact for any finite logits, and
    a NaN or inf poisons only the windows that hold it. A batch split over a mesh
    (`jax.typeof(inputs).sharding`) is pooled per shard, without communication
    (`lip_jax.sharded`).
    """
    inputs = float_array("inputs", inputs)
    logits = float_array("logits", logits, compute_dtype(inputs.dtype))
    x, l, feature_ndim = _align(inputs, logits, "logits")
    pool_window(x.shape, window_shape, strides, padding, feature_ndim, ceil_mode)  # checks
    bounded = logit_bounds is not None
    if bounded:
        _check_bounds(logit_bounds)
    backend = _kernel_backend(implementation, len(window_shape), bounded)

    def pool(inputs, logits):
        x, l, feature_ndim = _align(inputs, logits, "logits")
        window = pool_window(x.shape, window_shape, strides, padding, feature_ndim,
                             ceil_mode)
        if backend is not None and x.size:
            return _lip_kernel(inputs, logits, window, x.ndim - feature_ndim - 2, backend)
        return _merge_features(lip_xla.lip(x, l, window, bounded), feature_ndim)

    if inputs.ndim == len(window_shape) + 1:  # no batch dim
        return pool(inputs, logits)
    interpreted_tpu = backend == "tpu" and jax.default_backend() != "tpu"
    return per_shard(pool, inputs, logits, all_axes_manual=interpreted_tpu)


# What implementation=None picks per JAX backend ("xla" where absent). The GPU kernel
# (Triton; its Mosaic GPU successor has not run on a GPU yet) is the default where it was
# measured faster: on an H200, 1.14x (f32) and 1.17x (bf16) the XLA graph's
# forward+backward at (32, 56, 56, 256) (README). It is reverse-mode only:
# forward mode on a GPU needs "xla". With `logit_bounds` (DEFAULT_BOUNDED_IMPLEMENTATION)
# every backend takes "xla": on the H200 its bounded path (the fast form alone,
# `bench_xla_parts.py`) ran 1.3x (f32) and 1.7x (bf16) faster than the kernel at that
# shape, and as fast at (128, 28, 28, 32).
DEFAULT_IMPLEMENTATION = {"gpu": "pallas"}
DEFAULT_BOUNDED_IMPLEMENTATION: dict[str, str] = {}


def _check_bounds(logit_bounds):
    """A ValueError names `logit_bounds` unless they are valid."""
    try:
        low, high = (float(b) for b in logit_bounds)
    except (TypeError, ValueError):  # not a pair of numbers, or traced
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= high - low < FAST_LOGIT_RANGE):
        raise ValueError(f"logit_bounds must be two finite numbers (low, high) with 0 <= high "
                         f"- low < {FAST_LOGIT_RANGE:g}, got {logit_bounds!r}")


def _kernel_backend(implementation: Implementation, spatial_ndim: int,
                    bounded: bool) -> str | None:
    """Which kernel runs ("gpu", "mosaic_gpu" or "tpu"), or None for the XLA graph."""
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    platform = jax.default_backend()
    if implementation is None:
        defaults = DEFAULT_BOUNDED_IMPLEMENTATION if bounded else DEFAULT_IMPLEMENTATION
        implementation = defaults.get(platform, "xla")
    if implementation == "xla" or spatial_ndim != 2:
        return None
    backend = implementation.removeprefix("pallas_") if implementation != "pallas" else (
        "tpu" if platform == "tpu" else "gpu")
    runs_on = "tpu" if backend == "tpu" else "gpu"
    if platform not in ("cpu", runs_on):
        raise ValueError(f"implementation={implementation!r} runs on {runs_on.upper()} or, "
                         f"in interpret mode, on CPU; this is {platform.upper()}")
    return backend


def _lip_kernel(inputs, logits, window: Window, lead: int, backend: str):
    """A fused kernel on `(B, H, W, C)` views; `lead` batch dims before H, W."""
    from lip_jax import lip_kernel  # noqa: PLC0415  (imports Pallas only when used)

    x = inputs.reshape(math.prod(inputs.shape[:lead]), *inputs.shape[lead:])
    groups = logits.shape[-1] if logits.ndim else 1
    l = jnp.broadcast_to(logits, (*inputs.shape[:-1], groups)).reshape(*x.shape[:-1], groups)
    geometry = tuple(field[lead:lead + 2] for field in window)
    y = lip_kernel.lip_pool_nhwc(x, l, geometry, backend)
    return y.reshape(*inputs.shape[:lead], *y.shape[1:])


def window_share(logits, window_shape, strides=None, padding: Padding = "VALID", *,
                 ceil_mode: bool = False):
    """Each pixel's share of the windows that cover it: mean over those windows p of
    `w[q] / sum_{q' in p} w[q']`, with `w = exp(logits)`.

    `logits` `(*batch, *spatial, C)` -> shares of the same shape in [0, 1], in float32
    (float64 for float64 logits), exact for any finite logits; pixels that no window
    covers (e.g. the last row of an odd input under k2/s2/p0) get 0.
    """
    logits = float_array("logits", logits, jnp.float32)
    window = pool_window(logits.shape, window_shape, strides, padding, ceil_mode=ceil_mode)
    return lip_xla.window_share(logits.astype(compute_dtype(logits.dtype)), window)


def soft_gate(z, coeff: float = 12.0):
    """The official amplified sigmoid, `coeff * sigmoid(z)`: logits in (0, coeff).

    Computed and returned in float32 or wider: the logits feed `exp`, and bf16 would
    round `12 * sigmoid` by up to 0.03, i.e. the weights by 3%.
    """
    z = float_array("z", z, ints_as=jnp.float32)
    coeff = float_array("coeff", coeff, ints_as=jnp.float32)
    return coeff * jax.nn.sigmoid(z.astype(jnp.promote_types(z.dtype, jnp.float32)))


def average_pool(inputs, window_shape, strides=None, padding: Padding = "VALID", *,
                 count_include_pad: bool = False, ceil_mode: bool = False):
    """Average pooling (LAN with w = 1), `(*batch, *spatial, C)` -> pooled, same dtype.

    `count_include_pad=False` (the default) averages the in-image pixels of each window:
    LAN's rule, so that `lip_pool` with zero logits equals this. `True` divides by the
    window's size within the padded input, as `flax.linen.avg_pool` and PyTorch's
    `avg_pool2d` do by default; with `ceil_mode` (PyTorch's rule), the part of a window
    past the padding is never counted. The counts come from one `(1, ..., *spatial, 1)`
    array: XLA would constant-fold a batch-sized one at compile time (seconds at batch 500).
    """
    x = float_array("inputs", inputs)
    window = pool_window(x.shape, window_shape, strides, padding, ceil_mode=ceil_mode)
    spatial = spatial_axes(window)
    ct = compute_dtype(x.dtype)
    ones = jnp.ones([n if a in spatial else 1 for a, n in enumerate(x.shape)], ct)
    if flag("count_include_pad", count_include_pad):  # the padding, not what ceil_mode adds
        base = pool_window(x.shape, window_shape, strides, padding)
        ones = jnp.pad(ones, base.pads, constant_values=1)
        window = window._replace(pads=tuple((0, hi - b_hi) for (_, hi), (_, b_hi)
                                            in zip(window.pads, base.pads)))
        x = jnp.pad(x, base.pads)
    return (window_sum(x.astype(ct), window) / window_sum(ones, window)).astype(x.dtype)


def soft_pool(inputs, window_shape, strides=None, padding: Padding = "VALID", *,
              ceil_mode: bool = False):
    """SoftPool (Stergiou et al. 2021): LIP with logits = inputs."""
    return lip_pool(inputs, inputs, window_shape, strides, padding, ceil_mode=ceil_mode)


def tempered_max_pool(inputs, window_shape, strides=None, padding: Padding = "VALID",
                      beta: float = 20.0, *, ceil_mode: bool = False):
    """LIP with logits `beta * inputs`; tends to max pooling as beta -> inf.

    Its output never exceeds the window max and is non-decreasing in beta; a window of
    K values lies within (K - 1) / (e * beta) of its max. Exact for any beta, gradients
    included; on the XLA graph, images with `beta * (max - min)` above
    `FAST_LOGIT_RANGE` take the slower per-window form (see `lip_pool`'s numerics). A
    Python `beta` must be finite (an array's is not checked).
    """
    if isinstance(beta, (int, float)) and not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}: max pooling is its limit "
                         "(`flax.linen.max_pool`)")
    beta = float_array("beta", beta, ints_as=jnp.float32)
    return lip_pool(inputs, beta * float_array("inputs", inputs), window_shape, strides, padding,
                    ceil_mode=ceil_mode)


def periodic_weights(pattern, spatial_shape, offset=None) -> jax.Array:
    """A fixed positional prior: `w[q] = pattern[(q + offset) mod pattern.shape]`.

    Args:
      pattern: array with one dim per spatial dim, e.g. the stride's shape.
      spatial_shape: the unpadded spatial shape of the inputs.
      offset: low padding per dim (default 0), so that phase 0 is each window origin.
    Returns:
      `(*spatial_shape, 1)`, broadcastable to inputs as LAN weights. A one-hot pattern at
      phase 0 with `pattern.shape == strides >= window_shape` is strided subsampling.
    """
    pattern = jnp.asarray(pattern)
    offset = (0,) * pattern.ndim if offset is None else tuple(offset)
    if not pattern.ndim == len(spatial_shape) == len(offset):
        raise ValueError(f"pattern of shape {pattern.shape}, spatial_shape "
                         f"{tuple(spatial_shape)} and offset {offset} need one entry per "
                         "spatial dim")
    spatial_shape = positive_ints("spatial_shape", spatial_shape, pattern.ndim)
    try:
        offset = tuple(operator.index(o) for o in offset)
    except TypeError:
        raise TypeError(f"offset must be ints, got {offset!r}") from None
    index = jnp.meshgrid(*[(jnp.arange(n) + o) % p
                           for n, o, p in zip(spatial_shape, offset, pattern.shape)],
                         indexing="ij")
    return pattern[tuple(index)][..., None]


__all__ = ["DEFAULT_BOUNDED_IMPLEMENTATION", "DEFAULT_IMPLEMENTATION", "FAST_LOGIT_RANGE",
           "IMPLEMENTATIONS", "Padding", "Window", "average_pool", "lan_pool", "lip_pool",
           "periodic_weights", "pool_window", "soft_gate", "soft_pool", "tempered_max_pool",
           "window_share", "window_sum", "window_sum_transpose"]
