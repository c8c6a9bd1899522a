"""Poolings whose weights depend on the window, not only the pixel, in float64, as
`lip_jax`'s ops: average pooling (which may count the padding), BlurPool (binomial
weights, PyTorch's padding modes) and detail-preserving pooling (weights from each
pixel's deviation from its window's mean). Inputs `(*batch, *spatial, C)` give
`(*batch, *pooled_spatial, C)` float64."""

from __future__ import annotations

import math

import numpy as np

from lip_jax.testing.reference.core import (as_float64, batch_first, unbroadcast,
                                            weighted_mean, with_vjp)
from lip_jax.testing.reference.geometry import windows

PADDING_MODES = ("exclude", "zeros", "reflect", "replicate")


def _sources(taps, spatial, mode: str):
    """(index, mask) of the taps a window counts and the pixel each reads: "exclude",
    the in-image taps; otherwise every tap in the padding, filled as PyTorch's modes
    do: "reflect" mirrors about the edge pixel, "replicate" repeats it, "zeros" reads
    the zero pixel appended after the last row (index `spatial[0]`)."""
    mask = taps.inside if mode == "exclude" else taps.padded
    coord, size = taps.coord[mask], np.array(spatial)
    if mode == "reflect":
        coord = np.where(coord < 0, -coord, np.where(coord >= size, 2 * (size - 1) - coord, coord))
    elif mode == "replicate":
        coord = np.clip(coord, 0, size - 1)
    elif mode == "zeros":
        outside = ~np.all((coord >= 0) & (coord < size), axis=1)
        coord = np.where(outside[:, None], [spatial[0]] + [0] * (len(spatial) - 1), coord)
    return tuple(coord.T), mask


def _fixed_pool(inputs, window_shape, strides, padding, ceil_mode, mode, tap_weights):
    """`sum_t c_t x[source_t] / sum_t c_t` over each window's counted taps, with
    `tap_weights(offsets (T, n)) -> c (T,)`. VJP `(inputs,)`."""
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {mode!r}")
    x = as_float64("inputs", inputs)
    geometry = windows(x.shape, window_shape, strides, padding, ceil_mode)
    n = len(geometry.spatial)
    if mode == "reflect":
        for axis, (size, pads) in enumerate(zip(geometry.spatial, geometry.pads)):
            if max(pads) >= size:
                raise ValueError(f"reflect padding {pads} needs spatial dim {axis} longer "
                                 f"than the padding; it has size {size}")
    xb = batch_first(x, n)
    extended = np.pad(xb, [(0, 0), (0, 1)] + [(0, 0)] * n)  # the zero pixel
    regions = []
    for taps in geometry.taps:
        index, mask = _sources(taps, geometry.spatial, mode)
        regions.append((taps.out, index, tap_weights(taps.offset[mask])[None, :, None]))
    y, pull = weighted_mean(extended, geometry.out_shape, regions)

    def pullback(g):
        return (pull(g.reshape(y.shape))[0][:, :geometry.spatial[0]].reshape(x.shape),)

    return y.reshape(x.shape[:x.ndim - n - 1] + geometry.out_shape + x.shape[-1:]), pullback


@with_vjp
def average_pool(inputs, window_shape, strides=None, padding="VALID", *,
                 count_include_pad=False, ceil_mode=False):
    """The mean of each window's in-image pixels, or with `count_include_pad` their sum
    over the window's size within the padded input (what `ceil_mode` adds beyond the
    padding is never counted: PyTorch's `avg_pool2d`). VJP: `(inputs,)`."""
    mode = "zeros" if count_include_pad else "exclude"
    return _fixed_pool(inputs, window_shape, strides, padding, ceil_mode, mode,
                       lambda offsets: np.ones(len(offsets)))


def binomial(offsets, window_shape) -> np.ndarray:
    """`prod_d comb(k_d - 1, j_d)` for each window offset `j` (rows of `offsets`)."""
    return np.array([math.prod(math.comb(k - 1, int(j)) for k, j in zip(window_shape, row))
                     for row in offsets], np.float64)


@with_vjp
def blur_pool(inputs, window_shape, strides=None, padding="VALID", *,
              padding_mode="exclude", ceil_mode=False):
    """BlurPool: each window's binomial-weighted mean (weight `prod_d comb(k_d - 1, j_d)`
    at window offset `j`). `padding_mode` "exclude" counts in-image pixels only;
    "zeros", "reflect", "replicate" fill the padding as PyTorch does and count it
    (never what `ceil_mode` adds beyond it). VJP: `(inputs,)`."""
    return _fixed_pool(inputs, window_shape, strides, padding, ceil_mode, padding_mode,
                       lambda offsets: binomial(offsets, window_shape))


@with_vjp
def dpp_pool(inputs, alpha, lam, window_shape, strides=None, padding="VALID",
             asymmetric=False, eps=1e-3, *, ceil_mode=False):
    """Lite-DPP (Saeedan et al. 2018): over each window's in-image pixels, with `m` their
    mean and `d = x - m` (`max(d, 0)` if `asymmetric`), weights
    `w = alpha + (d^2 + eps^2)^(lam / 2)`; `alpha`, `lam` per channel `(C,)` or scalars.
    VJP: `(inputs, alpha, lam)`, by the closed form of the weights' derivatives."""
    x = as_float64("inputs", inputs)
    alpha_in, lam_in = as_float64("alpha", alpha), as_float64("lam", lam)
    c = x.shape[-1]
    a, l = np.broadcast_to(alpha_in, (c,)), np.broadcast_to(lam_in, (c,))
    geometry = windows(x.shape, window_shape, strides, padding, ceil_mode)
    n = len(geometry.spatial)
    xb = batch_first(x, n)
    regions, saved = [], []
    for taps in geometry.taps:
        index = taps.image_index()
        xs = xb[(slice(None), *index, slice(None))]
        d = xs - xs.mean(1, keepdims=True)
        positive = d > 0 if asymmetric else np.ones(d.shape, bool)
        d = np.where(positive, d, 0)
        base = d * d + eps * eps
        rho = base ** (l / 2)
        regions.append((taps.out, index, a + rho))
        # d w / d d and d w / d lam, at each tap
        saved.append((positive * l * d * rho / base, rho * np.log(base) / 2))
    y, pull = weighted_mean(xb, geometry.out_shape, regions)

    def pullback(g):
        dx, dws = pull(g.reshape(y.shape))
        dalpha, dlam = np.zeros(c), np.zeros(c)
        for (_, index, _), dw, (dw_dd, dw_dlam) in zip(regions, dws, saved):
            u = dw * dw_dd  # through d = x - mean(x): (identity - 1/T) transposed
            np.add.at(dx, (slice(None), *index, slice(None)), u - u.mean(1, keepdims=True))
            dalpha += dw.sum((0, 1))
            dlam += (dw * dw_dlam).sum((0, 1))
        return (dx.reshape(x.shape), unbroadcast(dalpha, alpha_in.shape),
                unbroadcast(dlam, lam_in.shape))

    return y.reshape(x.shape[:x.ndim - n - 1] + geometry.out_shape + x.shape[-1:]), pullback
