"""LIP on the XLA graph: `lip(x, l, window)`, the weighted mean of `x` with weights
`exp(l)` over each window, and its exact derivatives (a `jax.custom_jvp`).

Sums run in float32 (float64 for float64 inputs). Each image (and logit channel) whose
logit range is under `FAST_LOGIT_RANGE` is shifted by its own maximum: two window sums,
the fast form. Any other image (a wider range, inf or NaN) takes the per-window form,
which shifts each window by its own maximum over strided taps, as the kernels always do;
it is computed only when the batch holds such an image (`lax.cond`), one image at a
time, and the choice is made per image, so an image's result never depends on the rest
of its batch. The result is the exact weighted mean for any finite logits, and a NaN or
inf poisons only the windows that hold it. Given `bounded` (logit ranges promised under
`FAST_LOGIT_RANGE`), every image takes the fast form, with no statistics and no cond.

The derivatives never use a log-sum-exp rounded at the logits' own magnitude: the fast
form recomputes its weights `exp(l - shift)` and keeps the windows' weight sums, the
per-window form recomputes each window's maximum. Float32 gradients keep float32
accuracy at logit offsets of 1e6 and magnitudes of 1e12.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lip_jax.sharded import device_count
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


def _image_stats(l, window: Window, ct):
    """(shift, fast) per image and logit channel: the spatial max of the logits in `ct`
    (a constant to every derivative, at any order: the result does not depend on it),
    and whether their range is under FAST_LOGIT_RANGE (False for NaN or inf). Read in
    the logits' own dtype (max and min are exact in any)."""
    axes = spatial_axes(window)
    top, bottom = (lax.stop_gradient(f(l, axes, keepdims=True)).astype(ct)
                   for f in (jnp.max, jnp.min))
    fast = top - bottom < FAST_LOGIT_RANGE
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
    the mixed branch's temporaries at one image's size: a branch of `lax.cond` that is
    not taken still sizes the program's temporary buffer (and XLA:CPU maps one over
    32 MiB afresh, page faults included, on every call). Arrays whose batch dim is 1
    (broadcast logits) are passed whole to every image."""
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
    """Fast form: w = exp(l - shift), two window sums (`shift` a constant to the
    derivatives). Returns (y, log window sum)."""
    w = jnp.exp(l - shift)
    total = window_sum(w, window)
    return window_sum(w * x, window) / total, jnp.log(total)


def _compute(x, l, window: Window):
    """x and logits in the compute dtype, the logits spatially broadcast."""
    ct = compute_dtype(x.dtype)
    return x.astype(ct), spatial_broadcast(l.astype(ct), x.shape, window)


def lip(x, l, window: Window, bounded: bool = False):
    """`(*batch, *spatial, C)` inputs, logits broadcastable to them -> the pooled mean
    in x's dtype.

    `bounded` (a promise: every image's logit range is under FAST_LOGIT_RANGE) makes every
    image take the fast form: no statistics, no cond. Otherwise one `lax.cond` on the
    batch picks `_image_lip` (every image fast) or `_mixed_lip`.
    """
    if bounded:
        return _image_lip(x, l, window)
    shift, fast = _image_stats(spatial_broadcast(l, x.shape, window), window,
                               compute_dtype(x.dtype))
    return lax.cond(_all_fast(fast), lambda x, l, *_: _image_lip(x, l, window),
                    lambda *a: _mixed_lip(*a, window), x, l, shift, fast)


@jax.custom_batching.custom_vmap
def _all_fast(fast):
    """Whether every image takes the fast form. Under `vmap` on one device, one answer for
    all that it batches: a batched predicate turns the cond into a select of both branches
    (the mixed one computed for every batch), and the mixed form chooses per image anyway.
    On several devices the vmapped images may be split over them, and one answer would
    take an all-reduce: there each vmapped call keeps its own."""
    return jnp.all(fast)


@_all_fast.def_vmap
def _all_fast_vmap(axis_size, in_batched, fast):
    if device_count(fast) > 1:
        return jnp.all(fast, axis=tuple(range(1, fast.ndim))), True
    return jnp.all(fast), False


def _image_max(l, window: Window):
    """Each image's max, recomputed wherever needed rather than passed around: XLA:CPU
    fuses max -> subtract -> exp into one fast kernel only when the max has no other use
    (and a constant shift's plain exp is slower)."""
    return lax.stop_gradient(jnp.max(l, spatial_axes(window), keepdims=True))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _image_lip(x, l, window: Window):
    """LIP when every image is fast."""
    xc, lc = _compute(x, l, window)
    return _image_form(xc, lc, _image_max(lc, window), window)[0].astype(x.dtype)


@_image_lip.defjvp
def _image_lip_jvp(window: Window, primals, tangents):
    x, l = primals
    xc, lc = _compute(x, l, window)
    y, log_total = _image_form(xc, lc, _image_max(lc, window), window)
    return y.astype(x.dtype), _image_tangent(window, x, l, y, log_total, *tangents).astype(
        x.dtype)


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _image_tangent(window: Window, x, l, y, log_total, dx, dl):
    dx, dl = _tangents(x, dx, dl, y.dtype, window)
    shift = _image_max(spatial_broadcast(l, x.shape, window), window).astype(y.dtype)
    x, l = _compute(x, l, window)
    return _image_dy(window, x, jnp.exp(l - shift), y, jnp.exp(-log_total), dx, dl)


def _mixed_form(x, l, shift, fast, window: Window):
    """Each image by its own form, one image at a time (in the compute dtype only there).
    Returns (y, log total)."""
    return _per_image(_chosen_form, window, x, spatial_broadcast(l, x.shape, window), shift,
                      fast)


def _chosen_form(window: Window, x, l, shift, fast):
    """The fast form where `fast`, else the per-window form."""
    x, l = _compute(x, l, window)
    y, log_total = _image_form(x, jnp.where(fast, l, shift), shift, window)
    yw, log_tw = _window_form(x, l, window)
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
# mode is their transpose. Both forms recompute them (checkpointed) from x, l, y and
# log_total (the mixed one also from the per-image shift and choice): the cond's two
# branches then keep the same residuals, x and l being its own operands, which XLA
# neither copies nor fills with zeros. (Keeping the fast form's w instead costs XLA:CPU a
# full-size copy.)
def _tangents(x, dx, dl, ct, window: Window):
    return dx.astype(ct), spatial_broadcast(dl.astype(ct), x.shape, window)


def _image_dy(window: Window, x, w, y, inv_total, dx, dl):
    return (window_sum(w * (dx + x * dl), window) - y * window_sum(w * dl, window)) * inv_total


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _mixed_tangent(window: Window, x, l, y, log_total, shift, fast, dx, dl):
    # The tangents enter the per-image map in the compute dtype: its transpose stacks
    # their cotangents one image at a time, and XLA:CPU updates a bfloat16 stack by
    # converting all of it, for every image.
    dx, dl = _tangents(x, dx, dl, y.dtype, window)
    l = spatial_broadcast(l, x.shape, window)
    return _per_image(_chosen_tangent, window, x, l, y, log_total, shift, fast, dx, dl)


def _chosen_tangent(window: Window, x, l, y, log_total, shift, fast, dx, dl):
    x, l = _compute(x, l, window)
    # the fast form's values for per-window images are discarded: keep them finite
    w = jnp.exp(jnp.where(fast, l, shift) - shift)
    dy = _image_dy(window, x, w, y, jnp.exp(-jnp.where(fast, log_total, 0)), dx, dl)
    return jnp.where(fast, dy, _window_tangent(window, x, l, y, log_total, fast, dx, dl))


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
