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

from collections.abc import Sequence
import functools
import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | Sequence[tuple[int, int]]


class Window(NamedTuple):
    """Full-rank window geometry (batch and feature dims have window 1, stride 1)."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]


def _int_tuple(name: str, value, n: int) -> tuple[int, ...]:
    """Ints (Python or NumPy); floats and strings are refused, never truncated."""
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if len(out) != n or any(v < 1 for v in out):
        raise ValueError(f"{name} must be {n} positive ints, got {value!r}")
    return out


def _spatial_pads(spatial_shape, window_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding not in ("VALID", "SAME"):
            raise ValueError(
                f'padding must be "VALID", "SAME" or (low, high) pairs, got {padding!r}')
        return tuple(lax.padtype_to_pads(spatial_shape, window_shape, strides, padding))
    try:
        pads = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding must be (low, high) int pairs, got {padding!r}") from None
    if len(pads) != len(window_shape) or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(
            f"padding needs {len(window_shape)} non-negative (low, high) pairs, got {padding!r}")
    return pads


def pool_window(input_shape, window_shape, strides=None, padding: Padding = "VALID",
                feature_ndim: int = 1) -> Window:
    """Validates a pooling geometry and returns it over all `len(input_shape)` dims.

    The spatial dims are the `len(window_shape)` dims before the last `feature_ndim`.
    Raises ValueError for a window larger than the padded input, or padding so wide that
    a window would hold padding only (its weights would sum to zero).
    """
    if not isinstance(window_shape, Sequence):
        raise TypeError(f"window_shape must be a sequence of ints, got {window_shape!r}")
    n = len(window_shape)
    if len(input_shape) < n + feature_ndim:
        raise ValueError(
            f"inputs of shape {tuple(input_shape)} have rank {len(input_shape)}; a {n}-D window "
            f"needs rank >= {n + 1}: (*batch, {n} spatial dims, features)")
    window_shape = _int_tuple("window_shape", window_shape, n)
    strides = (1,) * n if strides is None else _int_tuple("strides", strides, n)
    lead = len(input_shape) - n - feature_ndim
    spatial = tuple(input_shape[lead:lead + n])
    pads = _spatial_pads(spatial, window_shape, strides, padding)
    for axis, (size, k, s, (lo, hi)) in enumerate(zip(spatial, window_shape, strides, pads)):
        if size + lo + hi < k:
            raise ValueError(
                f"window {k} is larger than spatial dim {axis} of size {size} padded by "
                f"({lo}, {hi}); input shape {tuple(input_shape)}")
        last_start = (size + lo + hi - k) // s * s - lo
        if lo >= k or last_start >= size:
            raise ValueError(
                f"padding ({lo}, {hi}) on spatial dim {axis} (size {size}, window {k}, "
                f"stride {s}) leaves windows that hold padding only")
    one = (1,) * lead, (1,) * feature_ndim
    return Window(
        dims=one[0] + window_shape + one[1],
        strides=one[0] + strides + one[1],
        pads=((0, 0),) * lead + pads + ((0, 0),) * feature_ndim,
    )


def _axes(window: Window):
    """(axis, window, stride, (low, high)) of each dim that is pooled."""
    return [(axis, k, s, p) for axis, (k, s, p) in
            enumerate(zip(window.dims, window.strides, window.pads)) if (k, s, p) != (1, 1, (0, 0))]


def window_sum(x: jax.Array, window: Window) -> jax.Array:
    """Sum of `x` over each window: zero padding, reducer `lax.add`, concrete 0 init.

    Computed one axis at a time (a k1 x k2 window costs k1 + k2 adds, not k1 * k2).
    """
    zero = np.zeros((), x.dtype)
    for axis, k, s, pads in _axes(window):
        dims, strides, padding = [1] * x.ndim, [1] * x.ndim, [(0, 0)] * x.ndim
        dims[axis], strides[axis], padding[axis] = k, s, pads
        x = lax.reduce_window(x, zero, lax.add, dims, strides, padding)
    return x


def window_sum_transpose(u: jax.Array, window: Window, input_shape) -> jax.Array:
    """The transpose of `window_sum`: `t[q]` = sum of `u[p]` over the windows `p` holding
    `q`, an `input_shape` array (autodiff's transpose of the per-axis sums)."""
    transpose = jax.linear_transpose(lambda t: window_sum(t, window),
                                     jax.ShapeDtypeStruct(tuple(input_shape), u.dtype))
    return transpose(u)[0]


def _compute_dtype(dtype) -> jnp.dtype:
    """float64 stays float64; every narrower float accumulates in float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _check_float(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def _align(inputs, weights, name: str) -> tuple[jax.Array, jax.Array, int]:
    """Checks dtypes and broadcasting; splits features into groups for grouped weights.

    Returns (inputs, weights, feature_ndim). Weights of shape (..., G) with G dividing the
    C features of the inputs (1 < G < C) are grouped: each run of C // G consecutive
    features shares one weight; inputs become (..., G, C // G) and weights (..., G, 1).
    """
    inputs = _check_float("inputs", inputs)
    weights = _check_float(name, weights)
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


def lan_pool(inputs, weights, window_shape, strides=None, padding: Padding = "VALID"):
    """Weighted mean of `inputs` over each window, `sum(w * x) / sum(w)`.

    Args:
      inputs: `(*batch, *spatial, features)` floats.
      weights: non-negative, broadcastable to `inputs` (or grouped, see `lip_pool`).
        Every window needs a positive weight sum, else its output is NaN.
      window_shape: one int per spatial dim.
      strides: one int per spatial dim; default 1.
      padding: "VALID", "SAME" or `(low, high)` per spatial dim; padding has weight 0.
    Returns:
      `(*batch, *pooled_spatial, features)` in the dtype of `inputs`, summed in float32
      (float64 for float64 inputs). Differentiated by autodiff.
    """
    x, w, feature_ndim = _align(inputs, weights, "weights")
    window = pool_window(x.shape, window_shape, strides, padding, feature_ndim)
    ct = _compute_dtype(x.dtype)
    x, w = x.astype(ct), jnp.broadcast_to(w.astype(ct), x.shape)
    out = window_sum(w * x, window) / window_sum(w, window)
    return _merge_features(out, feature_ndim).astype(inputs.dtype)


Implementation = str | None

# Logit ranges (max - min over the whole batch) below this take the fast image-wide
# shift: every weight exp(l - max) >= e^-60 stays a normal float32, and so does the
# backward's g / S. Wider ranges, inf and NaN take the per-window shift.
FAST_LOGIT_RANGE = 60.0


def lip_pool(inputs, logits, window_shape, strides=None, padding: Padding = "VALID",
             implementation: Implementation = None):
    """Local importance pooling: `lan_pool(inputs, exp(logits), ...)` with exact
    derivatives.

    The official `lip2d(x, l, k, s, p)` (NCHW) equals
    `lip_pool(x, l, (k, k), (s, s), ((p, p), (p, p)))` (NHWC).

    Args:
      inputs: `(*batch, *spatial, features)` floats.
      logits: broadcastable to `inputs`: per feature `(..., C)`, shared `(..., 1)`, or
        grouped `(..., G)` with `G` dividing `C` (features `g*C/G .. (g+1)*C/G - 1`
        share logit `g`).
      window_shape, strides, padding: as in `lan_pool`.
      implementation: "xla" (the XLA graph below: any rank, forward and reverse mode),
        "pallas" (the fused kernels of `lip_jax.pallas_lip`: 2-D windows, other ranks
        take "xla"; reverse mode only; compiled on GPU, interpret mode on CPU; no TPU
        kernel) or None: `DEFAULT_IMPLEMENTATION` of the backend ("pallas" on a
        single GPU; "xla" elsewhere and on several devices).
    Returns:
      `(*batch, *pooled_spatial, features)` in the dtype of `inputs`.

    Numerics: sums run in float32 (float64 for float64 inputs). The XLA graph shifts the
    logits by their maximum over each image's feature map when the batch's logit range is
    under `FAST_LOGIT_RANGE`, and otherwise (a `lax.cond`) by each window's own maximum,
    as the kernels always do: the result is the exact weighted mean for any finite
    logits, and a NaN or inf poisons only the windows that hold it.
    """
    x, l, feature_ndim = _align(inputs, logits, "logits")
    window = pool_window(x.shape, window_shape, strides, padding, feature_ndim)
    if _resolve(implementation, len(window_shape)) == "pallas" and x.size:
        return _lip_pallas(inputs, logits, window, x.ndim - feature_ndim - 2)
    return _merge_features(_lip(x, l, window), feature_ndim)


# What implementation=None picks per JAX backend ("xla" where absent). The kernels are
# the default only where measured faster: on an H100, 1.75x (f32) and 1.44x (bf16) the
# XLA graph's forward+backward at (32, 56, 56, 256), LIP-ResNet-50 bf16 training +6%
# (README). They are reverse-mode only (forward mode on a GPU needs "xla"), and picked
# only when the job has one device: GSPMD cannot split a pallas_call over a sharded batch.
DEFAULT_IMPLEMENTATION = {"gpu": "pallas"}


def _resolve(implementation: Implementation, spatial_ndim: int) -> str:
    """'xla' or 'pallas' (2-D windows only; other ranks take 'xla')."""
    if implementation not in (None, "xla", "pallas"):
        raise ValueError(f'implementation must be None, "xla" or "pallas", got '
                         f"{implementation!r}")
    backend = jax.default_backend()
    if implementation is None:  # pallas_call is not partitioned: one device only
        implementation = (DEFAULT_IMPLEMENTATION.get(backend, "xla")
                          if jax.device_count() == 1 else "xla")
    if implementation == "pallas" and backend == "tpu":
        raise NotImplementedError('implementation="pallas" has no TPU (Mosaic) kernel; '
                                  'use "xla"')
    return implementation if spatial_ndim == 2 else "xla"


def _lip_pallas(inputs, logits, window: Window, lead: int):
    """The fused kernels on `(B, H, W, C)` views; `lead` batch dims before H, W."""
    from lip_jax import pallas_lip  # noqa: PLC0415  (imports Pallas only when used)

    inputs, logits = jnp.asarray(inputs), jnp.asarray(logits)
    x = inputs.reshape(math.prod(inputs.shape[:lead]), *inputs.shape[lead:])
    groups = logits.shape[-1] if logits.ndim else 1
    l = jnp.broadcast_to(logits, (*inputs.shape[:-1], groups)).reshape(*x.shape[:-1], groups)
    geometry = tuple(field[lead:lead + 2] for field in window)
    y = pallas_lip.lip_pool_nhwc(x, l, geometry, jax.default_backend() != "gpu")
    return y.reshape(*inputs.shape[:lead], *y.shape[1:])


def _pixel_shape_logits(x, l):
    """Logits broadcast to `x` in the compute dtype."""
    return jnp.broadcast_to(l, x.shape).astype(_compute_dtype(x.dtype))


def _spatial_axes(window: Window) -> tuple[int, ...]:
    return tuple(a[0] for a in _axes(window))


def _pad(a, window: Window, fill):
    return lax.pad(a, np.array(fill, a.dtype), [(lo, hi, 0) for lo, hi in window.pads])


def _tap(padded, window: Window, out_shape, offset):
    """The strided view `padded[p * stride + offset]` (offset traced) of out_shape."""
    span = [(m - 1) * s + 1 for m, s in zip(out_shape, window.strides)]
    region = lax.dynamic_slice(padded, offset, span)
    return lax.slice(region, [0] * len(span), span, window.strides)


def _taps(a, window: Window, fill, out_shape):
    """Every window offset's strided view of `a` padded with `fill`."""
    padded = _pad(a, window, fill)
    return [_tap(padded, window, out_shape, offset) for offset in np.ndindex(*window.dims)]


def _image_shift(x, l, window: Window):
    """Fast form: w = exp(l - image max), two window sums. Returns (y, lse)."""
    shift = jnp.max(l, _spatial_axes(window), keepdims=True)
    w = jnp.exp(l - shift)
    total = window_sum(w, window)
    return window_sum(w * x.astype(w.dtype), window) / total, shift + jnp.log(total)


def _window_shift(x, l, window: Window):
    """Per-window-stable form over the window taps. Returns (y, lse)."""
    out_shape = jax.eval_shape(lambda a: window_sum(a, window), l).shape
    l_taps = _taps(l, window, -np.inf, out_shape)
    top = functools.reduce(jnp.maximum, l_taps)
    e = [jnp.exp(t - top) for t in l_taps]
    total = sum(e)
    xs = _taps(x.astype(l.dtype), window, 0, out_shape)
    acc = sum(jnp.where(ei > 0, ei * xi, 0) for ei, xi in zip(e, xs))
    return acc / total, top + jnp.log(total)


def _per_image(fn, window: Window, *arrays):
    """`fn(window, *arrays)` one batch element at a time (`lax.map`, checkpointed), which
    bounds the memory of the per-window form; arrays broadcast along the first dim.
    A batch dim sharded explicitly (`AxisType.Explicit`) cannot be scanned: one call."""
    batch_spec = jax.typeof(arrays[0]).sharding.spec
    if ((window.dims[0], window.strides[0], window.pads[0]) != (1, 1, (0, 0))
            or (batch_spec and batch_spec[0] is not None)):
        return fn(window, *arrays)  # no batch dim, or one explicitly sharded: no scan
    n, ndim = arrays[0].shape[0], arrays[0].ndim
    arrays = [jnp.broadcast_to(a, jnp.broadcast_shapes(a.shape, (n,) + (1,) * (ndim - 1)))
              for a in arrays]
    inner = Window(window.dims[1:], window.strides[1:], window.pads[1:])
    return lax.map(jax.checkpoint(lambda a: fn(inner, *a)), arrays)


def _lip_primal(x, l, window: Window):
    """(y in the compute dtype, window log-sum-exp of the logits, fast-form flag)."""
    axes, lp = _spatial_axes(window), _pixel_shape_logits(x, l)
    fast = jnp.all(jnp.max(lp, axes) - jnp.min(lp, axes) < FAST_LOGIT_RANGE)
    # Branch operands are the raw inputs: a broadcast cond operand would be materialised.
    y, lse = lax.cond(
        fast, lambda x, l: _image_shift(x, _pixel_shape_logits(x, l), window),
        lambda x, l: _per_image(lambda w, x, l: _window_shift(x, _pixel_shape_logits(x, l), w),
                                window, x, l), x, l)
    return y, lse, fast


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _lip(x, l, window: Window):
    return _lip_primal(x, l, window)[0].astype(x.dtype)


@_lip.defjvp
def _lip_jvp(window: Window, primals, tangents):
    x, l = primals
    dx, dl = tangents
    y, lse, fast = _lip_primal(x, l, window)
    image_shift = functools.partial(_image_shift_tangent, window)
    window_shift = functools.partial(_per_image, _window_shift_tangent, window)
    dy = jax.checkpoint(lambda *args: lax.cond(fast, image_shift, window_shift, *args))(
        x, l, y, lse, dx, dl)
    return y.astype(x.dtype), dy.astype(x.dtype)


# The tangents below are dy[p] = sum_q a[p,q] (dx[q] + (x[q] - y[p]) dl[q]) with
# a[p,q] = exp(l[q] - lse[p]): linear in (dx, dl), so reverse mode is their transpose.
# Checkpointed: reverse mode keeps only (x, l, y, lse) and recomputes the weights.


def _pixel_tangents(x, l, dx, dl, ct):
    """x, logits and both tangents at pixel shape in the compute dtype."""
    return (x.astype(ct), _pixel_shape_logits(x, l), dx.astype(ct),
            jnp.broadcast_to(dl, x.shape).astype(ct))


def _image_shift_tangent(window: Window, x, l, y, lse, dx, dl):
    x, l, dx, dl = _pixel_tangents(x, l, dx, dl, y.dtype)
    # >= every logit a window covers; any other stays below it + FAST_LOGIT_RANGE
    shift = jnp.max(lse, _spatial_axes(window), keepdims=True)
    w = jnp.exp(l - shift)
    inv_total = jnp.exp(shift - lse)
    return (window_sum(w * (dx + x * dl), window) - y * window_sum(w * dl, window)) * inv_total


def _window_shift_tangent(window: Window, x, l, y, lse, dx, dl):
    x, l, dx, dl = _pixel_tangents(x, l, dx, dl, y.dtype)
    padded = [_pad(a, window, f) for a, f in ((l, -np.inf), (x, 0), (dx, 0), (dl, 0))]

    @jax.checkpoint  # recompute each tap's weights: no stacked residuals
    def tap(offset, acc):
        lt, xt, dxt, dlt = (_tap(a, window, y.shape, offset) for a in padded)
        a = jnp.exp(lt - lse)
        return acc + jnp.where(a > 0, a * (dxt + (xt - y) * dlt), 0)

    return lax.fori_loop(0, math.prod(window.dims),
                         lambda t, acc: tap(jnp.unravel_index(t, window.dims), acc),
                         jnp.zeros_like(y))


def window_share(logits, window_shape, strides=None, padding: Padding = "VALID"):
    """Each pixel's share of the windows that cover it: mean over those windows p of
    `w[q] / sum_{q' in p} w[q']`, with `w = exp(logits)`.

    `logits` `(*batch, *spatial, C)` -> shares of the same shape in [0, 1]; pixels that no
    window covers (e.g. the last row of an odd input under k2/s2/p0) get 0.
    """
    logits = _check_float("logits", logits)
    window = pool_window(logits.shape, window_shape, strides, padding)
    lp = _pixel_shape_logits(logits, logits)
    w = jnp.exp(lp - jnp.max(lp, _spatial_axes(window), keepdims=True))
    total = window_sum(w, window)
    share = window_sum_transpose(1 / total, window, w.shape)
    count = window_sum_transpose(jnp.ones_like(total), window, w.shape)
    return jnp.where(count > 0, w * share / jnp.maximum(count, 1), 0)


def soft_gate(z, coeff: float = 12.0):
    """The official amplified sigmoid, `coeff * sigmoid(z)`: logits in (0, coeff).

    Computed and returned in float32 or wider: the logits feed `exp`, and bf16 would
    round `12 * sigmoid` by up to 0.03, i.e. the weights by 3%.
    """
    z = jnp.asarray(z)
    return coeff * jax.nn.sigmoid(z.astype(jnp.promote_types(z.dtype, jnp.float32)))


def average_pool(inputs, window_shape, strides=None, padding: Padding = "VALID"):
    """Average pooling over the in-image pixels of each window (LAN with w = 1)."""
    return lip_pool(inputs, jnp.zeros((), inputs.dtype), window_shape, strides, padding)


def soft_pool(inputs, window_shape, strides=None, padding: Padding = "VALID"):
    """SoftPool (Stergiou et al. 2021): LIP with logits = inputs."""
    return lip_pool(inputs, inputs, window_shape, strides, padding)


def tempered_max_pool(inputs, window_shape, strides=None, padding: Padding = "VALID",
                      beta: float = 20.0):
    """LIP with logits `beta * inputs`; tends to max pooling as beta -> inf.

    Its output never exceeds the window max and is non-decreasing in beta; a window of
    K values lies within (K - 1) / (e * beta) of its max. Any beta is exact; on the XLA
    graph, batches with `beta * (max - min)` above `FAST_LOGIT_RANGE` take the slower
    per-window form (see `lip_pool`'s numerics).
    """
    return lip_pool(inputs, beta * inputs, window_shape, strides, padding)


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
    index = jnp.meshgrid(*[(jnp.arange(n) + o) % p
                           for n, o, p in zip(spatial_shape, offset, pattern.shape)],
                         indexing="ij")
    return pattern[tuple(index)][..., None]
