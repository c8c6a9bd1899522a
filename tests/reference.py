"""A slow, obviously-correct float64 NumPy reference for LAN/LIP pooling."""

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
