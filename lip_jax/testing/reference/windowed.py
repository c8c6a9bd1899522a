"""LAN pooling and its special cases over local windows, as `lip_jax`'s ops (same
names, arguments and defaults), in float64: each window's output is the weighted mean of
its in-image pixels (padding weighs 0). Inputs `(*batch, *spatial, C)` give
`(*batch, *pooled_spatial, C)` float64."""

from __future__ import annotations

import numpy as np

from lip_jax.testing.reference.core import (as_float64, batch_first, broadcast_logits, scatter,
                                            weighted_mean, with_vjp)
from lip_jax.testing.reference.geometry import windows


def _pool(x, weights, reduce, window_shape, strides, padding, ceil_mode, log):
    """Weighted mean (softmax with `log`) of `x` over each window's in-image pixels,
    weights of x's shape; the pullback gives `(dx, reduce(d weights))`."""
    geometry = windows(x.shape, window_shape, strides, padding, ceil_mode)
    n = len(geometry.spatial)
    xb, wb = batch_first(x, n), batch_first(weights, n)
    regions = []
    for taps in geometry.taps:
        index = taps.image_index()
        regions.append((taps.out, index, wb[(slice(None), *index, slice(None))]))
    y, pull = weighted_mean(xb, geometry.out_shape, regions, log)
    shape = x.shape[:x.ndim - n - 1] + geometry.out_shape + x.shape[-1:]

    def pullback(g):
        dx, dws = pull(g.reshape(y.shape))
        return dx.reshape(x.shape), reduce(scatter(xb.shape, regions, dws).reshape(x.shape))

    return y.reshape(shape), pullback


@with_vjp
def lan_pool(inputs, weights, window_shape, strides=None, padding="VALID", *,
             ceil_mode=False):
    """`sum(w x) / sum(w)` over each window's in-image pixels; weights per feature,
    shared or grouped as in `lip_jax.lan_pool`. VJP: `(inputs, weights)`."""
    x = as_float64("inputs", inputs)
    w, reduce = broadcast_logits("weights", weights, x.shape)
    return _pool(x, w, reduce, window_shape, strides, padding, ceil_mode, log=False)


@with_vjp
def lip_pool(inputs, logits, window_shape, strides=None, padding="VALID",
             implementation=None, *, ceil_mode=False, logit_bounds=None):
    """The softmax(logits)-weighted mean of each window's in-image pixels, the softmax
    shifted by the window's own maximum; logits per feature, shared or grouped as in
    `lip_jax.lip_pool` (`implementation` and `logit_bounds`, which change how, not what,
    it computes, are accepted and ignored). VJP: `(inputs, logits)`."""
    del implementation, logit_bounds
    x = as_float64("inputs", inputs)
    l, reduce = broadcast_logits("logits", logits, x.shape)
    return _pool(x, l, reduce, window_shape, strides, padding, ceil_mode, log=True)


def _self_weighted(inputs, beta, window_shape, strides, padding, ceil_mode):
    """LIP with logits `beta * inputs`; VJP `(inputs,)`, both roles summed."""
    x = as_float64("inputs", inputs)
    y, pull = _pool(x, beta * x, lambda d: d, window_shape, strides, padding, ceil_mode,
                    log=True)

    def pullback(g):
        dx, dl = pull(g)
        return (dx + beta * dl,)

    return y, pullback


@with_vjp
def soft_pool(inputs, window_shape, strides=None, padding="VALID", *, ceil_mode=False):
    """SoftPool: `lip_pool(inputs, inputs, ...)`. VJP: `(inputs,)`."""
    return _self_weighted(inputs, 1.0, window_shape, strides, padding, ceil_mode)


@with_vjp
def tempered_max_pool(inputs, window_shape, strides=None, padding="VALID", beta=20.0, *,
                      ceil_mode=False):
    """`lip_pool(inputs, beta * inputs, ...)`. VJP: `(inputs,)`."""
    return _self_weighted(inputs, float(beta), window_shape, strides, padding, ceil_mode)


@with_vjp
def window_share(logits, window_shape, strides=None, padding="VALID", *, ceil_mode=False):
    """Each pixel's mean, over the windows holding it, of its softmax weight in the
    window; 0 for pixels no window holds. VJP: `(logits,)`."""
    l = as_float64("logits", logits)
    geometry = windows(l.shape, window_shape, strides, padding, ceil_mode)
    lb = batch_first(l, len(geometry.spatial))
    count = np.zeros(geometry.spatial)
    shares, saved = np.zeros(lb.shape), []
    for taps in geometry.taps:
        at = (slice(None), *taps.image_index(), slice(None))
        e = np.exp(lb[at] - lb[at].max(1, keepdims=True))
        a = e / e.sum(1, keepdims=True)
        shares[at] += a
        count[taps.image_index()] += 1
        saved.append((at, a))
    scale = np.where(count > 0, 1 / np.maximum(count, 1), 0)[None, ..., None]

    def pullback(g):
        h = g.reshape(lb.shape) * scale  # d loss / d (each window's share of q)
        dl = np.zeros(lb.shape)
        for at, a in saved:  # softmax: d a_q / d l_j = a_q (delta_qj - a_j)
            dl[at] += a * (h[at] - (h[at] * a).sum(1, keepdims=True))
        return (dl.reshape(l.shape),)

    return (shares * scale).reshape(l.shape), pullback


def max_pool(inputs, window_shape, strides=None, padding="VALID", *, ceil_mode=False):
    """The maximum of each window's in-image pixels (padding excluded), float64: the
    limit of `tempered_max_pool` as beta grows. No VJP (ties have none)."""
    x = as_float64("inputs", inputs)
    geometry = windows(x.shape, window_shape, strides, padding, ceil_mode)
    n = len(geometry.spatial)
    xb = batch_first(x, n)
    y = np.empty((xb.shape[0], *geometry.out_shape, xb.shape[-1]))
    for taps in geometry.taps:
        y[(slice(None), *taps.out, slice(None))] = xb[
            (slice(None), *taps.image_index(), slice(None))].max(1)
    return y.reshape(x.shape[:x.ndim - n - 1] + geometry.out_shape + x.shape[-1:])
