"""The second stage: RoI pooling over the pyramid, the box head, its targets, losses and
detections.

`pool_rois` maps each RoI to one pyramid level (FPN's rule) and pools it with
`lip_jax.roi_lip_pool`: zero logits ("align") is exactly RoIAlign; learned logits ("lip")
weight each bin's bilinear samples by `exp(logit)`. Targets, losses and detections are
pure functions of one image (vmap them over a batch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lip_jax.detection.boxes import area, clip, decode, encode
from lip_jax.detection.nms import batched_nms
from lip_jax.detection.sampling import match, sample_indices
from lip_jax.regions import roi_lip_pool

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # the box head's coding weights (Faster R-CNN's)


def roi_levels(boxes, levels, canonical_size: float, canonical_level: int):
    """FPN's level of each box `(K, 4)`: `floor(canonical_level + log2(sqrt(area) /
    canonical_size))`, clamped to `levels` (first, last)."""
    scale = jnp.sqrt(jnp.maximum(area(boxes), 1e-8))
    level = jnp.floor(canonical_level + jnp.log2(scale / canonical_size + 1e-8))
    return jnp.clip(level, levels[0], levels[-1]).astype(jnp.int32)


def pool_rois(pyramid: dict, logits: dict | None, rois, output_size, *, sampling_ratio: int,
              canonical_size: float, canonical_level: int):
    """Pools RoIs `(K, 5)` rows `(batch index, x1, y1, x2, y2)` from their level of
    `pyramid` `{"P2": (N, H, W, C), ...}` (level l has stride 2**l) with `roi_lip_pool`,
    the level's `logits` (None: zero logits, i.e. RoIAlign). Returns `(K, *output_size,
    C)`. Every level pools every RoI and each RoI keeps its own level's result."""
    levels = sorted(int(k[1:]) for k in pyramid)
    chosen = roi_levels(rois[:, 1:], levels, canonical_size, canonical_level)
    out = 0.0
    for level in levels:
        features = pyramid[f"P{level}"]
        l = jnp.zeros(features.shape[:-1] + (1,), features.dtype) if logits is None \
            else logits[f"P{level}"]
        pooled = roi_lip_pool(features, l, rois, output_size, 2.0 ** -level, sampling_ratio)
        out = out + jnp.where((chosen == level)[:, None, None, None], pooled, 0.0)
    return out


class BoxHead(nn.Module):
    """Two fully connected layers on the pooled RoIs `(K, h, w, C)`, then class logits
    `(K, num_classes + 1)` (index 0: background) and class-specific box deltas
    `(K, num_classes, 4)` (Faster R-CNN's 2fc head)."""

    num_classes: int
    width: int = 256

    @nn.compact
    def __call__(self, pooled):
        x = pooled.reshape(pooled.shape[0], -1)
        for i in range(2):
            x = nn.relu(nn.Dense(self.width, name=f"fc{i + 1}")(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                          name="classes")(x)
        deltas = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001),
                          name="deltas")(x)
        return logits, deltas.reshape(-1, self.num_classes, 4)


def roi_targets(key, proposals, proposals_valid, gt_boxes, gt_labels, gt_valid, *,
                num_samples: int, positive_fraction: float, positive_iou: float):
    """One image's training RoIs: proposals `(P, 4)` and the objects themselves, matched to
    the objects (foreground at IoU >= `positive_iou`), `num_samples` drawn with at most
    `positive_fraction` foreground. Returns RoIs `(S, 4)`, labels `(S,)` (0 background,
    else the object's 1-based class), box targets `(S, 4)` (0 on background) and which of
    the `S = num_samples` slots hold a sample."""
    candidates = jnp.concatenate([proposals, gt_boxes])
    valid = jnp.concatenate([proposals_valid, gt_valid])
    best_gt, best_iou = match(candidates, gt_boxes, gt_valid)
    index, positive, used = sample_indices(key, valid & (best_iou >= positive_iou),
                                           valid & (best_iou < positive_iou), num_samples,
                                           positive_fraction)
    rois, matched = candidates[index], best_gt[index]
    labels = jnp.where(positive, gt_labels[matched], 0)
    targets = jnp.where(positive[:, None], encode(gt_boxes[matched], rois, BOX_WEIGHTS), 0.0)
    return rois, labels, targets, used


def roi_losses(class_logits, deltas, labels, targets, used):
    """Mean over used RoIs of the classification cross-entropy, and the L1 distance of the
    foreground RoIs' deltas for their class to their targets, over the same count:
    `(classification, box)`. Inputs as `BoxHead` and `roi_targets` give them, any leading
    shape."""
    count = jnp.maximum(jnp.sum(used), 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, labels)
    own = jnp.take_along_axis(deltas, jnp.maximum(labels - 1, 0)[..., None, None], axis=-2)
    l1 = jnp.sum(jnp.abs(own[..., 0, :] - targets), axis=-1)
    return (jnp.sum(jnp.where(used, ce, 0.0)) / count,
            jnp.sum(jnp.where(used & (labels > 0), l1, 0.0)) / count)


def detect(class_logits, deltas, proposals, proposals_valid, image_size, *,
           score_threshold: float, iou_threshold: float, max_detections: int):
    """One image's detections from its proposals `(P, 4)` and their head outputs: each
    proposal's box for each class, scored by the class probability, those above
    `score_threshold` suppressed per class (`batched_nms`), the best `max_detections`.
    Returns boxes `(D, 4)`, scores `(D,)`, labels `(D,)` (1-based) and validity `(D,)`."""
    probs = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # (P, C)
    boxes = clip(decode(deltas, proposals[:, None, :], BOX_WEIGHTS), *image_size)
    ok = proposals_valid[:, None] & (probs > score_threshold) & (area(boxes) > 0)
    labels = jnp.broadcast_to(jnp.arange(1, probs.shape[1] + 1), probs.shape)
    boxes, scores, labels = (boxes.reshape(-1, 4), jnp.where(ok, probs, -jnp.inf).reshape(-1),
                             labels.reshape(-1))
    keep, valid = batched_nms(boxes, scores, labels, iou_threshold, max_detections)
    return boxes[keep], jnp.where(valid, scores[keep], 0.0), labels[keep], valid
