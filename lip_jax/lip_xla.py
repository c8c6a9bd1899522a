"""LIP on the XLA graph: `lip(x, l, window)`, the weighted mean of `x` with weights
`exp(l)` over each window, and its exact derivatives (a `jax.custom_jvp`).

Sums run in float32 (float64 for float64 inputs). Each image (and logit channel) whose
logit range is under `FAST_LOGIT_RANGE` is shifted by its own maximum: two window sums,
the fast form. Any other image (a wider range, inf or NaN) takes the per-window form,
which shifts each window by its own maximum over strided taps, as the kernels always do;
it is computed only when the batch holds such an image (`lax.cond`), and the choice is
made per image, so an image's result never depends on the rest of its batch. The result
is the exact weighted mean for any finite logits, and a NaN or inf poisons only the
windows that hold it.

The derivatives never use a log-sum-exp rounded at the logits' own magnitude: the fast
form keeps its weights `exp(l - image max)` and the windows' weight sums, the per-window
form recomputes each window's maximum. Float32 gradients keep float32 accuracy at logit
offsets of 1e6 and magnitudes of 1e12.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lip_jax.windows import Window, compute_dtype, spatial_axes, window_sum, window_sum_transpose

# Logit ranges (max - min over an image) below this take the fast image-wide shift:
# every weight exp(l - max) >= e^-60 stays a normal float32, and so does 1 / (window sum).
FAST_LOGIT_RANGE = 60.0


def spatial_broadcast(l, x_shape, window: Window):
    """`l` broadcast to the rank of `x` and to its size along the pooled dims (other dims
    keep their size: shared logits stay narrow)."""
    l = jnp.reshape(l, (1,) * (len(x_shape) - jnp.ndim(l)) + jnp.shape(l))
    pooled = spatial_axes(window)
    return jnp.broadcast_to(l, [x_shape[a] if a in pooled else n for a, n in enumerate(l.shape)])


def _out_shape(a, window: Window) -> tuple[int, ...]:
    return jax.eval_shape(lambda a: window_sum(a, window), a).shape


def _pad(a, window: Window, fill):
    return lax.pad(a, np.array(fill, a.dtype), [(lo, hi, 0) for lo, hi in window.pads])


def _taps(a, window: Window, fill):
    """Every window offset's strided view of `a` padded with `fill`: a list of
    `prod(window.dims)` arrays of `a`'s pooled shape."""
    padded = _pad(a, window, fill)
    span = [(m - 1) * s + 1 for m, s in zip(_out_shape(a, window), window.strides)]
    return [lax.slice(padded, offset, [o + n for o, n in zip(offset, span)], window.strides)
            for offset in np.ndindex(*window.dims)]


def _image_stats(l, window: Window):
    """(shift, fast) per image and logit channel: the spatial max of the logits, and
    whether their range is under FAST_LOGIT_RANGE (False for NaN or inf)."""
    axes = spatial_axes(window)
    top = jnp.max(l, axes, keepdims=True)
    fast = top - jnp.min(l, axes, keepdims=True) < FAST_LOGIT_RANGE
    return jnp.where(fast, top, 0), fast


def _window_weights(l, window: Window):
    """exp(logit - the window's max logit) at each window offset, and that max."""
    l_taps = _taps(l, window, -np.inf)
    top = functools.reduce(jnp.maximum, l_taps)
    return [jnp.exp(t - top) for t in l_taps], top


def _window_form(x, l, window: Window):
    """Per-window-stable pooled mean. Returns (y, log of the window's weight sum)."""
    e, _ = _window_weights(l, window)
    total = sum(e)
    acc = sum(jnp.where(ei > 0, ei * xi, 0) for ei, xi in zip(e, _taps(x, window, 0)))
    return acc / total, jnp.log(total)


def _per_image(fn, window: Window, *arrays):
    """`fn(window, *arrays)` one image at a time (`lax.map`, checkpointed), which keeps
    the per-window form's temporaries at one image's size: a branch of `lax.cond` that
    is not taken still costs the allocation of its temporaries. Arrays whose batch dim
    is 1 (broadcast logits) are passed whole to every image."""
    if (window.dims[0], window.strides[0], window.pads[0]) != (1, 1, (0, 0)):
        return fn(window, *arrays)  # no batch dim
    n = max(a.shape[0] for a in arrays)
    mapped = [a.shape[0] == n for a in arrays]
    inner = Window(window.dims[1:], window.strides[1:], window.pads[1:])

    @jax.checkpoint
    def one(images):
        it = iter(images)
        return fn(inner, *[next(it) if m else a[0] for a, m in zip(arrays, mapped)])

    return lax.map(one, [a for a, m in zip(arrays, mapped) if m])


def _image_form(x, l, shift, window: Window):
    """Fast form: w = exp(l - shift), two window sums. Returns (y, log window sum, w)."""
    w = jnp.exp(l - lax.stop_gradient(shift))
    total = window_sum(w, window)
    return window_sum(w * x, window) / total, jnp.log(total), w


def _compute(x, l, window: Window):
    """x and logits in the compute dtype, the logits spatially broadcast."""
    ct = compute_dtype(x.dtype)
    return x.astype(ct), spatial_broadcast(l.astype(ct), x.shape, window)


def lip(x, l, window: Window):
    """`(*batch, *spatial, C)` inputs, logits broadcastable to them -> the pooled mean
    in x's dtype. One `lax.cond` on the batch picks `_image_lip` (every image fast) or
    `_mixed_lip`; under `vmap` a cond computes both."""
    shift, fast = _image_stats(_compute(x, l, window)[1], window)
    return lax.cond(jnp.all(fast), lambda *a: _image_lip(*a, window),
                    lambda *a: _mixed_lip(*a, window), x, l, shift, fast)


def _image_max(l, window: Window):
    return jnp.max(l, spatial_axes(window), keepdims=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _image_lip(x, l, shift, fast, window: Window):
    """LIP when every image is fast. The shift is recomputed here (not `shift`): XLA:CPU
    fuses max -> subtract -> exp into one fast kernel only when the max has no other
    use."""
    xc, lc = _compute(x, l, window)
    return _image_form(xc, lc, _image_max(lc, window), window)[0].astype(x.dtype)


@_image_lip.defjvp
def _image_lip_jvp(window: Window, primals, tangents):
    x, l, _, _ = primals
    xc, lc = _compute(x, l, window)
    y, log_total, w = _image_form(xc, lc, _image_max(lc, window), window)
    dx, dl = _tangents(x, tangents[0], tangents[1], y.dtype, window)
    dy = _image_dy(window, xc, w, y, jnp.exp(-log_total), dx, dl)
    return y.astype(x.dtype), dy.astype(x.dtype)


def _mixed_form(x, l, shift, fast, window: Window):
    """Each image by its own form (the fast one where `fast`). Returns (y, log total)."""
    x, l = _compute(x, l, window)
    y, log_total, _ = _image_form(x, jnp.where(fast, l, shift), shift, window)
    yw, log_tw = _per_image(lambda w, x, l: _window_form(x, l, w), window, x, l)
    return jnp.where(fast, y, yw), jnp.where(fast, log_total, log_tw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _mixed_lip(x, l, shift, fast, window: Window):
    """LIP when some image takes the per-window form."""
    return _mixed_form(x, l, shift, fast, window)[0].astype(x.dtype)


@_mixed_lip.defjvp
def _mixed_lip_jvp(window: Window, primals, tangents):
    x, l, shift, fast = primals
    y, log_total = _mixed_form(x, l, shift, fast, window)
    dy = _mixed_tangent(window, x, l, y, log_total, shift, fast, *tangents[:2])
    return y.astype(x.dtype), dy.astype(x.dtype)


# The tangents are dy[p] = sum_q a[p,q] (dx[q] + (x[q] - y[p]) dl[q]), a[p,q] the
# normalised weight (w[q] / total[p] in the fast form): linear in (dx, dl), so reverse
# mode is their transpose. The fast form keeps w (XLA would otherwise recompute the
# exponential); the mixed one recomputes everything from (x, l, y, log_total, shift,
# fast), residuals of the same shapes as the fast form's, so neither branch of the cond
# fills the other's.
def _tangents(x, dx, dl, ct, window: Window):
    return dx.astype(ct), spatial_broadcast(dl.astype(ct), x.shape, window)


def _image_dy(window: Window, x, w, y, inv_total, dx, dl):
    return (window_sum(w * (dx + x * dl), window) - y * window_sum(w * dl, window)) * inv_total


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _mixed_tangent(window: Window, x, l, y, log_total, shift, fast, dx, dl):
    dx, dl = _tangents(x, dx, dl, y.dtype, window)
    x, l = _compute(x, l, window)
    # the fast form's values for per-window images are discarded: keep them finite
    w = jnp.exp(jnp.where(fast, l, shift) - shift)
    dy = _image_dy(window, x, w, y, jnp.exp(-jnp.where(fast, log_total, 0)), dx, dl)
    dyw = _per_image(_window_tangent, window, x, l, y, log_total, fast, dx, dl)
    return jnp.where(fast, dy, dyw)


def _window_tangent(window: Window, x, l, y, log_total, fast, dx, dl):
    """The tangent of the per-window form (valid where not `fast`)."""
    e, _ = _window_weights(l, window)
    scale = jnp.exp(-jnp.where(fast, 0, log_total))
    taps = zip(e, *(_taps(a, window, 0) for a in (x, dx, dl)))
    return sum(jnp.where(ei > 0, ei * scale * (dxt + (xt - y) * dlt), 0)
               for ei, xt, dxt, dlt in taps)


def window_share(l, window: Window):
    """Each pixel q's mean over the windows p that hold it of `exp(l[q]) / sum_{q' in p}
    exp(l[q'])`; 0 where no window holds q. Per-window stable: every term is in [0, 1]."""
    e, _ = _window_weights(l, window)
    total = sum(e)
    scatter = jax.linear_transpose(lambda a: _taps(a, window, 0),
                                   jax.ShapeDtypeStruct(l.shape, l.dtype))
    shares = scatter([ei / total for ei in e])[0]
    count = window_sum_transpose(jnp.ones(_out_shape(l, window), l.dtype), window, l.shape)
    return jnp.where(count > 0, shares / jnp.maximum(count, 1), 0)
