"""Slow, obviously-correct float64 NumPy references: LAN/LIP pooling, RoIAlign."""

import numpy as np
from jax import lax


def pads_for(spatial_shape, window, strides, padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads(spatial_shape, window, strides, padding)
    return padding


def _windows(shape, window, strides, padding):
    """(output index, index of the window's in-image pixels) of each window over the
    spatial dims of `shape` (*batch, *spatial, C), and the spatial axes."""
    n = len(window)
    lead = len(shape) - n - 1
    spatial = shape[lead:lead + n]
    pads = pads_for(spatial, window, strides, padding)
    out_shape = [(size + lo + hi - k) // s + 1
                 for size, k, s, (lo, hi) in zip(spatial, window, strides, pads)]
    regions = [(o, (Ellipsis,) + tuple(
        slice(max(i * s - lo, 0), min(i * s - lo + k, size))
        for i, s, (lo, _), k, size in zip(o, strides, pads, window, spatial)) + (slice(None),))
        for o in np.ndindex(*out_shape)]
    return regions, tuple(out_shape), tuple(range(lead, lead + n))


def _softmax(logits, axes):
    w = np.exp(logits - logits.max(axis=axes, keepdims=True))
    return w / w.sum(axes, keepdims=True)


def lip_reference(x, logits, window, strides, padding="VALID"):
    """Softmax(logits)-weighted mean of x over the in-image pixels of each window.

    x: (*batch, *spatial, C); logits broadcastable to x (not grouped).
    """
    x = np.asarray(x, np.float64)
    logits = np.broadcast_to(np.asarray(logits, np.float64), x.shape)
    regions, out_shape, axes = _windows(x.shape, window, strides, padding)
    lead = axes[0]
    out = np.empty(x.shape[:lead] + out_shape + x.shape[-1:])
    for o, region in regions:
        out[(Ellipsis,) + o + (slice(None),)] = (_softmax(logits[region], axes)
                                                 * x[region]).sum(axes)
    return out


def share_reference(logits, window, strides, padding="VALID"):
    """Each pixel's softmax weight averaged over the windows that hold it (0 if none)."""
    logits = np.asarray(logits, np.float64)
    regions, _, axes = _windows(logits.shape, window, strides, padding)
    total, count = np.zeros(logits.shape), np.zeros(logits.shape)
    for _, region in regions:
        total[region] += _softmax(logits[region], axes)
        count[region] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0)


def roi_align_numpy(features, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                    cotangent):
    """torchvision's RoIAlign (CPU kernel) stated directly, NHWC: `(output, VJP of
    `cotangent` w.r.t. features)`, for `sampling_ratio >= 1`."""
    _, height, width, channels = features.shape
    out = np.zeros((len(boxes), *output_size, channels))
    grad = np.zeros(features.shape)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in (x1, y1, x2, y2))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / output_size[0], roi_w / output_size[1]
        for ph, pw, iy, ix in np.ndindex(*output_size, sampling_ratio, sampling_ratio):
            y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
            if y < -1.0 or y > height or x < -1.0 or x > width:
                continue
            y, x = max(y, 0.0), max(x, 0.0)
            y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
            y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            ly, lx = (y - y0 if y0 < height - 1 else 0.0), (x - x0 if x0 < width - 1 else 0.0)
            share = 1.0 / sampling_ratio ** 2
            for yy, xx, weight in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x1_, (1 - ly) * lx),
                                   (y1_, x0, ly * (1 - lx)), (y1_, x1_, ly * lx)):
                out[k, ph, pw] += share * weight * features[int(b), yy, xx]
                grad[int(b), yy, xx] += share * weight * cotangent[k, ph, pw]
    return out, grad
