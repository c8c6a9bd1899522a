"""Greedy non-maximum suppression with static shapes (jit- and vmap-friendly).

A box is kept when no kept box of higher score overlaps it by more than the IoU threshold
(the rule of `torchvision.ops.nms`). Invalid candidates carry a score of `-inf` (NaN
scores are not candidates either); `+inf` is a candidate that ranks first.
"""

import jax
import jax.numpy as jnp

from lip_jax.detection.boxes import check_boxes, pairwise_iou
from lip_jax.windows import positive_int, unit_interval


def _per_box(name: str, values, boxes):
    """`values`; a ValueError naming `name` unless its static shape is `(K,)` for `boxes`
    `(K, 4)`."""
    if jnp.shape(values) != jnp.shape(boxes)[:1]:
        raise ValueError(f"{name} of shape {jnp.shape(values)}: expected (K,) = "
                         f"{jnp.shape(boxes)[:1]}, one per box of boxes {jnp.shape(boxes)}")
    return values


def nms(boxes, scores, iou_threshold: float, max_output: int):
    """Indices `(max_output,)` of the kept boxes of `boxes` `(K, 4)` by decreasing score
    (`scores` `(K,)`, `-inf` or NaN = not a candidate), and `(max_output,)` whether each
    slot holds one (unused slots hold index 0). Ties keep the lower index first.
    `iou_threshold` in [0, 1] (a traced one is not checked); `max_output` >= 1."""
    return _greedy(boxes, scores, None, iou_threshold, max_output)


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int):
    """`nms` within each class: boxes of different `classes` `(K,)` (any ids, compared
    exactly) never suppress one another."""
    return _greedy(boxes, scores, _per_box("classes", classes, boxes), iou_threshold,
                   max_output)


def _greedy(boxes, scores, classes, iou_threshold, max_output):
    """`nms` (`classes` None) or `batched_nms`: arguments checked, then `_keep`."""
    boxes = jnp.asarray(check_boxes("boxes", boxes, 2))
    scores = jnp.asarray(_per_box("scores", scores, boxes))
    unit_interval("iou_threshold", iou_threshold)
    max_output = positive_int("max_output", max_output)
    if boxes.shape[0] == 0:  # nothing to keep: every slot unused
        return jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool)
    order = jnp.argsort(-scores, stable=True)
    keep = _keep(boxes[order], scores[order] > -jnp.inf,
                 None if classes is None else jnp.asarray(classes)[order], iou_threshold)
    slots = jnp.nonzero(keep, size=max_output, fill_value=0)[0]
    valid = jnp.arange(max_output) < jnp.sum(keep)
    return jnp.where(valid, order[slots], 0), valid


def _keep(boxes, candidate, classes, iou_threshold):
    """`(K,)` which of `boxes` `(K, 4)`, sorted by decreasing score, the greedy rule keeps
    among the `candidate` ones; a box suppresses only boxes of its own `classes` (None: one
    class)."""
    k = boxes.shape[0]
    iou = pairwise_iou(boxes, boxes)
    later = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
    suppresses = (iou > iou_threshold) & later  # (K, K): row i suppresses later columns
    if classes is not None:
        suppresses &= classes[:, None] == classes[None, :]

    def visit(i, keep):
        return keep & ~(keep[i] & suppresses[i])

    return jax.lax.fori_loop(0, k, visit, candidate)
