"""LIP on the XLA graph: `lip(x, l, window)`, the weighted mean of `x` with weights
`exp(l)` over each window, and its exact derivatives (a `jax.custom_jvp`).

Sums run in float32 (float64 for float64 inputs). When the batch's logit range is under
`FAST_LOGIT_RANGE` the logits are shifted by their maximum over each image's feature map
(two window sums); otherwise (a `lax.cond`) by each window's own maximum, as the kernels
of `pallas_lip` always do: the result is the exact weighted mean for any finite logits,
and a NaN or inf poisons only the windows that hold it. `window_share` spreads each
window's normalised weights back to its pixels with the same per-window shift.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lip_jax.windows import (Window, compute_dtype, spatial_axes, window_sum,
                             window_sum_transpose)

# Logit ranges (max - min over the whole batch) below this take the fast image-wide
# shift: every weight exp(l - max) >= e^-60 stays a normal float32, and so does the
# backward's g / S. Wider ranges, inf and NaN take the per-window shift.
FAST_LOGIT_RANGE = 60.0


def pixel_shape_logits(x, l):
    """Logits broadcast to `x` in the compute dtype."""
    return jnp.broadcast_to(l, x.shape).astype(compute_dtype(x.dtype))


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
    shift = jnp.max(l, spatial_axes(window), keepdims=True)
    w = jnp.exp(l - shift)
    total = window_sum(w, window)
    return window_sum(w * x.astype(w.dtype), window) / total, shift + jnp.log(total)


def _out_shape(a, window: Window) -> tuple[int, ...]:
    return jax.eval_shape(lambda a: window_sum(a, window), a).shape


def _window_weights(l, window: Window, out_shape):
    """exp(logit - the window's max logit) at each window offset, and that max."""
    l_taps = _taps(l, window, -np.inf, out_shape)
    top = functools.reduce(jnp.maximum, l_taps)
    return [jnp.exp(t - top) for t in l_taps], top


def _window_shift(x, l, window: Window):
    """Per-window-stable form over the window taps. Returns (y, lse)."""
    out_shape = _out_shape(l, window)
    e, top = _window_weights(l, window, out_shape)
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
    axes, lp = spatial_axes(window), pixel_shape_logits(x, l)
    fast = jnp.all(jnp.max(lp, axes) - jnp.min(lp, axes) < FAST_LOGIT_RANGE)
    # Branch operands are the raw inputs: a broadcast cond operand would be materialised.
    y, lse = lax.cond(
        fast, lambda x, l: _image_shift(x, pixel_shape_logits(x, l), window),
        lambda x, l: _per_image(lambda w, x, l: _window_shift(x, pixel_shape_logits(x, l), w),
                                window, x, l), x, l)
    return y, lse, fast


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def lip(x, l, window: Window):
    """`(*batch, *spatial, C)` inputs and logits (broadcastable) -> the pooled mean."""
    return _lip_primal(x, l, window)[0].astype(x.dtype)


@lip.defjvp
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
    return (x.astype(ct), pixel_shape_logits(x, l), dx.astype(ct),
            jnp.broadcast_to(dl, x.shape).astype(ct))


def _image_shift_tangent(window: Window, x, l, y, lse, dx, dl):
    x, l, dx, dl = _pixel_tangents(x, l, dx, dl, y.dtype)
    # >= every logit a window covers; any other stays below it + FAST_LOGIT_RANGE
    shift = jnp.max(lse, spatial_axes(window), keepdims=True)
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


def window_share(l, window: Window):
    """Each pixel q's mean over the windows p that hold it of `exp(l[q]) / sum_{q' in p}
    exp(l[q'])`; 0 where no window holds q. Per-window stable: every term is in [0, 1]."""
    out_shape = _out_shape(l, window)
    e, _ = _window_weights(l, window, out_shape)
    total = sum(e)
    scatter = jax.linear_transpose(lambda a: _taps(a, window, 0, out_shape),
                                   jax.ShapeDtypeStruct(l.shape, l.dtype))
    shares = scatter([ei / total for ei in e])[0]
    count = window_sum_transpose(jnp.ones(out_shape, l.dtype), window, l.shape)
    return jnp.where(count > 0, shares / jnp.maximum(count, 1), 0)
