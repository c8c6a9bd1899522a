"""LIP over regions other than local windows, in float64, as `lip_jax`'s ops: all
positions, PyTorch's adaptive bins, and RoIAlign's bilinear samples (with
torchvision's `roi_align` itself, their zero-logit case)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from lip_jax.testing.reference.core import (as_float64, broadcast_logits, scatter,
                                            value_and_pullback, weighted_mean, with_vjp)


def _lip_regions(x, l, reduce, out_shape, regions):
    """Softmax mean of `x` `(N, *spatial, C)` over `[(out index, pixel index)]`."""
    regions = [(o, index, l[(slice(None), *index, slice(None))]) for o, index in regions]
    y, pull = weighted_mean(x, out_shape, regions, log=True)

    def pullback(g):
        dx, dls = pull(g)
        return dx, reduce(scatter(x.shape, regions, dls))

    return y, pullback


def _inputs(inputs, logits):
    x = as_float64("inputs", inputs)
    if x.ndim < 3:
        raise ValueError(f"inputs of shape {x.shape}: expected (N, *spatial, C)")
    l, reduce = broadcast_logits("logits", logits, x.shape, grouped=False)
    return x, l, reduce


@with_vjp
def global_lip_pool(inputs, logits):
    """The softmax(logits)-weighted mean over all positions, `(N, *spatial, C) -> (N, C)`.
    VJP: `(inputs, logits)`."""
    x, l, reduce = _inputs(inputs, logits)
    every = tuple(np.indices(x.shape[1:-1]).reshape(x.ndim - 2, -1))
    return _lip_regions(x, l, reduce, (), [((), every)])


def adaptive_bins(size: int, out: int) -> list[range]:
    """PyTorch's adaptive-pool bins along one dim: `floor(i * size / out)` to
    `ceil((i + 1) * size / out)`."""
    return [range(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


@with_vjp
def adaptive_lip_pool(inputs, logits, output_size: int | Sequence[int]):
    """The softmax(logits)-weighted mean over each of PyTorch's adaptive bins,
    `(N, *spatial, C) -> (N, *output_size, C)`. VJP: `(inputs, logits)`."""
    x, l, reduce = _inputs(inputs, logits)
    spatial = x.shape[1:-1]
    sizes = (output_size,) * len(spatial) if isinstance(output_size, int) else tuple(output_size)
    if len(sizes) != len(spatial) or min(sizes) < 1:
        raise ValueError(f"output_size {output_size!r} needs {len(spatial)} positive ints for "
                         f"inputs of shape {x.shape}")
    bins = [adaptive_bins(n, o) for n, o in zip(spatial, sizes)]
    regions = [(o, tuple(np.array(list(itertools.product(*(b[i] for b, i in zip(bins, o))))).T))
               for o in itertools.product(*map(range, sizes))]
    return _lip_regions(x, l, reduce, sizes, regions)


def _bilinear_row(y: float, x: float, height: int, width: int) -> dict[tuple[int, int], float]:
    """torchvision's bilinear sample at `(y, x)`: pixel -> weight, empty (the sample
    reads 0) outside `[-1, height] x [-1, width]`."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return {}
    taps = []
    for c, size in ((max(y, 0.0), height), (max(x, 0.0), width)):
        low = min(int(c), size - 1)
        high = min(low + 1, size - 1)
        frac = c - low if low < size - 1 else 0.0
        taps.append(((low, 1 - frac), (high, frac)))
    row: dict[tuple[int, int], float] = {}
    for (yi, wy), (xi, wx) in itertools.product(*taps):
        row[yi, xi] = row.get((yi, xi), 0.0) + wy * wx
    return row


def sampling_matrix(box, height: int, width: int, output_size, spatial_scale: float,
                    sampling_ratio: int, aligned: bool) -> np.ndarray:
    """RoIAlign's bilinear sampling of one box `(x1, y1, x2, y2)` as a matrix
    `(out_h * g * out_w * g, height * width)` (`g = sampling_ratio`): row
    `((ph * g + iy) * out_w + pw) * g + ix` samples bin `(ph, pw)` at sub-point
    `(iy, ix)`, torchvision's rule (points at `(i + 0.5) / g` of each bin; with
    `aligned`, corners shifted by -0.5; otherwise boxes at least 1 x 1)."""
    out_h, out_w = output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    g = sampling_ratio
    matrix = np.zeros((out_h * g * out_w * g, height * width))
    for row, (ph, iy, pw, ix) in enumerate(itertools.product(range(out_h), range(g),
                                                            range(out_w), range(g))):
        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / g
        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / g
        for (yi, xi), weight in _bilinear_row(y, x, height, width).items():
            matrix[row, yi * width + xi] += weight
    return matrix


@with_vjp
def roi_lip_pool(features, logits, boxes, output_size: int | Sequence[int],
                 spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True):
    """RoIAlign whose bilinear samples (`sampling_matrix`) are averaged with weights
    `exp(sampled logits)`; samples outside the map read 0 for features and logits.
    `features` `(N, H, W, C)`, `boxes` `(K, 5)` rows `(batch_index, x1, y1, x2, y2)`
    -> `(K, out_h, out_w, C)`. VJP: `(features, logits)`: the sampling is linear, so
    its transpose carries the samples' gradients back."""
    f = as_float64("features", features)
    if f.ndim != 4:
        raise ValueError(f"features of shape {f.shape}: expected (N, H, W, C)")
    b = as_float64("boxes", boxes)
    if b.ndim != 2 or b.shape[1] != 5:
        raise ValueError(f"boxes of shape {b.shape}: expected (K, 5) rows "
                         "(batch_index, x1, y1, x2, y2)")
    if int(sampling_ratio) < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    l, reduce = broadcast_logits("logits", logits, f.shape, grouped=False)
    n, height, width, c = f.shape
    size = (output_size,) * 2 if isinstance(output_size, int) else tuple(output_size)
    g = int(sampling_ratio)
    images = b[:, 0].astype(int)
    matrices = [sampling_matrix(box[1:], height, width, size, spatial_scale, g, aligned)
                for box in b]

    def sample(a):  # (N, H, W, C) -> (K, out_h, g, out_w, g, C)
        rows = [m @ a[i].reshape(height * width, c) for m, i in zip(matrices, images)]
        return np.array(rows, np.float64).reshape(len(b), size[0], g, size[1], g, c)

    values, weights = sample(f), sample(l)
    regions = [((ph, pw), (np.full(g * g, ph), np.repeat(np.arange(g), g), np.full(g * g, pw),
                           np.tile(np.arange(g), g)))
               for ph, pw in itertools.product(range(size[0]), range(size[1]))]
    y, pullback = _lip_regions(values, weights, lambda d: d, size, regions)

    def transpose(d):  # (K, out_h, g, out_w, g, C) sample gradients -> (N, H, W, C)
        out = np.zeros((n, height * width, c))
        for m, i, dk in zip(matrices, images, d.reshape(len(matrices), -1, c)):
            out[i] += m.T @ dk
        return out.reshape(f.shape)

    def features_and_logits(g_out):
        dv, dl = pullback(g_out)
        return transpose(dv), reduce(transpose(dl))

    return y.reshape(len(b), *size, c), features_and_logits


@with_vjp
def roi_align(features, boxes, output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True):
    """torchvision's `roi_align` (its CPU kernel, `sampling_ratio >= 1`), channels-last:
    each bin's mean of its `sampling_ratio ** 2` bilinear samples, those outside the map
    read as 0. Equals `roi_lip_pool` with zero logits. VJP: `(features,)`."""
    features = as_float64("features", features)
    y, pullback = value_and_pullback(roi_lip_pool, features, np.zeros(features.shape[:-1] + (1,)),
                                     boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return y, lambda g: pullback(g)[:1]
