"""Region proposal network: the head, its proposals and its losses (one image at a time
for the pure functions; vmap them over a batch).

Anchors `(A, 4)` are the pyramid's (`anchors.pyramid_anchors`), in the order of the
head's outputs: levels, then rows, columns, anchors of a cell.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lip_jax.detection.boxes import clip, decode, encode
from lip_jax.detection.nms import nms
from lip_jax.detection.sampling import balanced_sample, match


class RPNHead(nn.Module):
    """One head shared by every level: 3x3 conv -> ReLU -> 1x1 objectness logits (one per
    anchor) and 1x1 box deltas (four per anchor), initialised N(0, 0.01) as Detectron2.
    `(levels of (N, H, W, C))` -> logits `(N, A)`, deltas `(N, A, 4)`."""

    anchors_per_cell: int

    @nn.compact
    def __call__(self, levels):
        init = nn.initializers.normal(0.01)
        conv = nn.Conv(levels[0].shape[-1], (3, 3), padding=((1, 1), (1, 1)),
                       kernel_init=init, name="conv")
        objectness = nn.Conv(self.anchors_per_cell, (1, 1), kernel_init=init,
                             name="objectness")
        deltas = nn.Conv(4 * self.anchors_per_cell, (1, 1), kernel_init=init, name="deltas")
        logits, boxes = [], []
        for p in levels:
            h = nn.relu(conv(p))
            logits.append(objectness(h).reshape(p.shape[0], -1))
            boxes.append(deltas(h).reshape(p.shape[0], -1, 4))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(boxes, axis=1)


def propose(anchors, logits, deltas, image_size, *, pre_nms: int, post_nms: int,
            iou_threshold: float):
    """Proposals of one image: the `pre_nms` anchors of highest objectness `logits` `(A,)`,
    moved by their `deltas` `(A, 4)` and clipped to `image_size` `(H, W)`, then `nms`.
    Returns boxes `(post_nms, 4)` by decreasing objectness and `(post_nms,)` validity."""
    scores, index = jax.lax.top_k(logits, pre_nms)
    boxes = clip(decode(deltas[index], anchors[index]), *image_size)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep, valid = nms(boxes, jnp.where(nonempty, scores, -jnp.inf), iou_threshold, post_nms)
    return boxes[keep], valid


def rpn_losses(key, anchors, logits, deltas, gt_boxes, gt_valid, *, num_samples: int,
               positive_fraction: float, positive_iou: float, negative_iou: float):
    """Sums over one image's sampled anchors of the objectness cross-entropy and of the
    L1 distance of positive anchors' deltas to their targets: `(objectness, box)`.

    Anchors with IoU >= `positive_iou` with an object, and each object's best anchors, are
    positive; anchors below `negative_iou` with every object are negative; `num_samples`
    of them are drawn, at most `positive_fraction` positive."""
    best_gt, best_iou = match(anchors, gt_boxes, gt_valid, low_quality=True)
    pos, neg = balanced_sample(key, best_iou >= positive_iou, best_iou < negative_iou,
                               num_samples, positive_fraction)
    bce = optax.sigmoid_binary_cross_entropy(logits, pos.astype(logits.dtype))
    targets = jnp.where(pos[:, None], encode(gt_boxes[best_gt], anchors), 0.0)
    l1 = jnp.sum(jnp.abs(deltas - targets), axis=-1)
    return jnp.sum(jnp.where(pos | neg, bce, 0.0)), jnp.sum(jnp.where(pos, l1, 0.0))
