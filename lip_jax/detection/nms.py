"""Greedy non-maximum suppression with static shapes (jit- and vmap-friendly).

A box is kept when no kept box of higher score overlaps it by more than the IoU threshold
(the rule of `torchvision.ops.nms`). Invalid candidates carry a score of `-inf`.
"""

import jax
import jax.numpy as jnp

from lip_jax.detection.boxes import pairwise_iou


def nms(boxes, scores, iou_threshold: float, max_output: int):
    """Indices `(max_output,)` of the kept boxes of `boxes` `(K, 4)` by decreasing score
    (`scores` `(K,)`, `-inf` = not a candidate), and `(max_output,)` whether each slot holds
    one (unused slots point at index 0). Ties keep the lower index first."""
    k = boxes.shape[0]
    order = jnp.argsort(-scores, stable=True)
    iou = pairwise_iou(boxes[order], boxes[order])
    later = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
    suppresses = (iou > iou_threshold) & later  # (K, K): row i suppresses later columns

    def visit(i, keep):
        return keep & ~(keep[i] & suppresses[i])

    keep = jax.lax.fori_loop(0, k, visit, jnp.isfinite(scores[order]))
    slots = jnp.nonzero(keep, size=max_output, fill_value=0)[0]
    return order[slots], jnp.arange(max_output) < jnp.sum(keep)


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int):
    """`nms` within each class: boxes of different `classes` `(K,)` never suppress one
    another (each class is moved to its own region of the plane)."""
    span = jnp.max(jnp.where(jnp.isfinite(scores)[:, None], jnp.abs(boxes), 0)) + 1
    return nms(boxes + (classes * 2 * span)[:, None].astype(boxes.dtype), scores,
               iou_threshold, max_output)
