"""Training targets: matching candidate boxes to ground truth, and balanced sampling.

Per image, static shapes: ground truth is padded to `M` rows with `valid` `(M,)` marking
the real ones.
"""

import jax
import jax.numpy as jnp

from lip_jax.detection.boxes import pairwise_iou


def match(candidates, gt_boxes, gt_valid, *, low_quality: bool = False):
    """Each candidate `(K, 4)`'s best ground-truth index and IoU (`(K,)`, `(K,)`; IoU -1
    when the image has no object). `low_quality` (the RPN's rule) also gives every object
    the candidates that overlap it most, with IoU raised to 1 so that they count as
    positive whatever the threshold."""
    iou = jnp.where(gt_valid[None, :], pairwise_iou(candidates, gt_boxes), -1.0)
    best_gt, best_iou = jnp.argmax(iou, axis=1), jnp.max(iou, axis=1)
    if low_quality:
        best_per_gt = jnp.max(iou, axis=0)  # (M,)
        is_best = (iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0) & gt_valid[None]
        best_iou = jnp.where(jnp.any(is_best, axis=1), 1.0, best_iou)
    return best_gt, best_iou


def _take_at_random(key, mask, count):
    """`mask` with all but `count` of its True entries, chosen at random, set False."""
    priority = jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(priority))
    return mask & (rank < count)


def balanced_sample(key, positive, negative, num: int, positive_fraction: float):
    """Masks `(positive, negative)` of a random sample of at most `num` entries: up to
    `num * positive_fraction` positives, negatives filling the rest."""
    pos_key, neg_key = jax.random.split(key)
    num_pos = jnp.minimum(jnp.sum(positive), int(num * positive_fraction))
    pos = _take_at_random(pos_key, positive, num_pos)
    neg = _take_at_random(neg_key, negative, jnp.minimum(jnp.sum(negative), num - num_pos))
    return pos, neg


def sample_indices(key, positive, negative, num: int, positive_fraction: float):
    """`balanced_sample` as `num` indices (sampled positives first, then negatives; `num`
    at most the number of entries) and `(num,)` masks of which slots are positive and
    which hold a sample at all."""
    pos, neg = balanced_sample(key, positive, negative, num, positive_fraction)
    index = jax.lax.top_k(2.0 * pos + 1.0 * neg, num)[1]
    return index, pos[index], (pos | neg)[index]
