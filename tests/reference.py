"""A slow, obviously-correct float64 NumPy reference for LAN/LIP pooling."""

import numpy as np
from jax import lax


def pads_for(spatial_shape, window, strides, padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads(spatial_shape, window, strides, padding)
    return padding


def lip_reference(x, logits, window, strides, padding="VALID"):
    """Softmax(logits)-weighted mean of x over the in-image pixels of each window.

    x: (*batch, *spatial, C); logits broadcastable to x (not grouped).
    """
    x = np.asarray(x, np.float64)
    logits = np.broadcast_to(np.asarray(logits, np.float64), x.shape)
    n = len(window)
    lead = x.ndim - n - 1
    spatial = x.shape[lead:lead + n]
    pads = pads_for(spatial, window, strides, padding)
    out_shape = [(size + lo + hi - k) // s + 1
                 for size, k, s, (lo, hi) in zip(spatial, window, strides, pads)]
    out = np.empty(x.shape[:lead] + tuple(out_shape) + x.shape[-1:])
    axes = tuple(range(lead, lead + n))
    for o in np.ndindex(*out_shape):
        region = (Ellipsis,) + tuple(
            slice(max(i * s - lo, 0), min(i * s - lo + k, size))
            for i, s, (lo, _), k, size in zip(o, strides, pads, window, spatial)) + (slice(None),)
        xs, ls = x[region], logits[region]
        w = np.exp(ls - ls.max(axis=axes, keepdims=True))
        out[(Ellipsis,) + o + (slice(None),)] = (w * xs).sum(axes) / w.sum(axes)
    return out
