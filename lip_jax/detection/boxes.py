"""Box arithmetic: areas, pairwise IoU, clipping, and the R-CNN box coding.

Boxes are `(..., 4)` arrays `(x1, y1, x2, y2)` in pixels (end exclusive, continuous
coordinates). The coding is Faster R-CNN's: a box relative to a reference box is
`(wx * dx / w_ref, wy * dy / h_ref, ww * log(w / w_ref), wh * log(h / h_ref))` with `dx, dy`
the shift of the centre and `weights = (wx, wy, ww, wh)`.
"""

import math

import jax.numpy as jnp

MAX_LOG_SCALE = math.log(1000.0 / 16)  # decoded width/height ratios are capped (Detectron2)


def check_boxes(name: str, boxes, ndim: int | None = None):
    """`boxes`; a ValueError naming `name` unless its static shape is `(..., 4)` (exactly
    `ndim` dims where given, e.g. 2 for `(K, 4)`)."""
    shape = tuple(jnp.shape(boxes))
    if shape[-1:] != (4,) or ndim not in (None, len(shape)):
        expected = "(K, 4)" if ndim == 2 else "(..., 4)"
        raise ValueError(f"{name} of shape {shape}: expected {expected} boxes (x1, y1, x2, y2)")
    return boxes


def _weights(weights, dtype):
    """The coding `weights` as a `(4,)` array of `dtype`; a ValueError otherwise."""
    w = jnp.asarray(weights, dtype)
    if w.shape != (4,):
        raise ValueError(f"weights {weights!r}: expected 4 coding weights (wx, wy, ww, wh)")
    return w


def area(boxes):
    """`(..., 4)` -> `(...)`; 0 for empty or inverted boxes."""
    check_boxes("boxes", boxes)
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(
        boxes[..., 3] - boxes[..., 1], 0)


def pairwise_iou(a, b):
    """Intersection over union of every box of `a` `(K, 4)` with every box of `b`
    `(M, 4)`: `(K, M)`, 0 where the union is empty."""
    check_boxes("a", a, 2)
    check_boxes("b", b, 2)
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def clip(boxes, height: int, width: int):
    """Boxes `(..., 4)` clipped to the image `[0, width] x [0, height]`."""
    check_boxes("boxes", boxes)
    limits = jnp.array([width, height, width, height], boxes.dtype)
    return jnp.clip(boxes, 0, limits)


def _centre_size(boxes):
    size = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + 0.5 * size, size


def encode(boxes, reference, weights=(1.0, 1.0, 1.0, 1.0)):
    """The deltas `(..., 4)` that turn `reference` into `boxes` (both `(..., 4)`, positive
    sizes)."""
    centre, size = _centre_size(check_boxes("boxes", boxes))
    ref_centre, ref_size = _centre_size(check_boxes("reference", reference))
    w = _weights(weights, boxes.dtype)
    return jnp.concatenate([w[:2] * (centre - ref_centre) / ref_size,
                            w[2:] * jnp.log(size / ref_size)], axis=-1)


def decode(deltas, reference, weights=(1.0, 1.0, 1.0, 1.0)):
    """The boxes `(..., 4)` that `deltas` make of `reference` (inverse of `encode`; scale
    deltas are capped at `MAX_LOG_SCALE`)."""
    check_boxes("deltas", deltas)
    ref_centre, ref_size = _centre_size(check_boxes("reference", reference))
    w = _weights(weights, deltas.dtype)
    centre = ref_centre + deltas[..., :2] / w[:2] * ref_size
    size = ref_size * jnp.exp(jnp.minimum(deltas[..., 2:] / w[2:], MAX_LOG_SCALE))
    return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)
