"""Faster R-CNN with a feature pyramid, in Flax, whose RoI pooling is RoIAlign or RoI-LIP.

`FasterRCNN(backbone, num_classes, roi_pool="align" | "lip")`: `backbone` is a
`features_only` model (`create_model(name, pool=..., features_only=True)`: strides 4-32,
"C2".."C5"); an `FPN` makes P2-P5; the `RPNHead` scores anchors on every level; the best
proposals after NMS are pooled from one of `roi_levels` chosen by FPN's rule
(`roi_head.pool_rois`) and classified by a `BoxHead`. With `roi_pool="lip"` a
`ProjectionLogit` (1x1 conv -> InstanceNorm -> 12 sigmoid, shared by the levels) gives each
level's per-channel logits; zero-initialised, its logits are constant, so RoI-LIP starts as
RoIAlign (but for samples outside the map, which read logit 0: e^-6 of the weight).

    model.init({"params": k, "sample": k2}, images, boxes, labels, method=model.losses)
    losses, updates = model.apply(variables, images, boxes, labels, rngs={"sample": k},
                                  mutable=["batch_stats"], method=model.losses)
    detections = model.apply(variables, images, method=model.detect)

Images are `(N, H, W, C)` floats (normalised); ground truth `(N, M, 4)` boxes
`(x1, y1, x2, y2)` in pixels and `(N, M)` labels `1..num_classes`, 0 on padding rows
(`FasterRCNN.losses` states what is checked).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.detection import roi_head, rpn
from lip_jax.detection.anchors import pyramid_anchors
from lip_jax.detection.fpn import FPN
from lip_jax.linen.logits import ProjectionLogit
from lip_jax.windows import (positive_floats, positive_int, positive_ints,
                             unit_interval)

ROI_POOLS = ("align", "lip")


def check_objects(gt_boxes, gt_labels, num_classes: int) -> None:
    """A ValueError naming the first object `(n, m)` whose label is not in
    `0..num_classes`, or whose box, labelled > 0, is not finite with `x2 > x1`, `y2 > y1`
    (torchvision's rule). Concrete inputs only: traced ones cannot be checked."""
    if isinstance(gt_boxes, jax.core.Tracer) or isinstance(gt_labels, jax.core.Tracer):
        return
    boxes, labels = np.asarray(gt_boxes, np.float64), np.asarray(gt_labels)
    bad_label = (labels < 0) | (labels > num_classes)
    good_box = np.isfinite(boxes).all(-1) & (boxes[..., 2:] > boxes[..., :2]).all(-1)
    for n, m in np.argwhere(bad_label | ((labels > 0) & ~good_box))[:1]:
        problem = (f"label {labels[n, m]}: expected 1..{num_classes} (0 on padding rows)"
                   if bad_label[n, m] else f"box {boxes[n, m].tolist()}: expected finite "
                   "(x1, y1, x2, y2) with x2 > x1 and y2 > y1")
        raise ValueError(f"gt object {m} of image {n} has {problem}")


class FasterRCNN(nn.Module):
    """Two-stage detector; `losses` trains it, `detect` runs it (see the module docstring).

    Fields beyond the parts: the FPN width `features`; anchors of `anchor_sizes` (one tuple
    per level P2..P5, pixels) times `aspect_ratios`; the RPN keeps `pre_nms` boxes before
    and `proposals` (train, test) after its NMS at `rpn_nms_iou`, and samples
    `rpn_samples` anchors per image (half positive at most; IoU >= 0.7 positive, < 0.3
    negative); the box head samples `roi_samples` RoIs per image (a quarter foreground at
    most, IoU >= 0.5), pools `pooled_size` bins of `sampling_ratio`^2 samples, has
    `head_width` units, and reports per class the boxes above `score_threshold` after NMS
    at `nms_iou`, the best `max_detections` per image.
    """

    backbone: nn.Module
    num_classes: int
    roi_pool: str = "align"
    features: int = 64
    anchor_sizes: Sequence[Sequence[float]] = ((11.3, 16), (22.6, 32), (45.3, 64), (90.5, 128))
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    pre_nms: int = 1000
    proposals: tuple[int, int] = (256, 100)
    rpn_nms_iou: float = 0.7
    rpn_samples: int = 256
    roi_samples: int = 64
    pooled_size: int = 7
    sampling_ratio: int = 2
    roi_levels: Sequence[int] = (2, 3, 4, 5)  # the pyramid levels RoIs are pooled from
    canonical_size: float = 64.0  # RoIs this big (sqrt of the area) pool from P4
    head_width: int = 256
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100

    def setup(self):
        if self.roi_pool not in ROI_POOLS:
            raise ValueError(f"unknown roi_pool {self.roi_pool!r}; choose one of "
                             f"{', '.join(ROI_POOLS)}")
        self._check_fields()
        self.fpn = FPN(self.features)
        self.rpn_head = rpn.RPNHead(len(self.anchor_sizes[0]) * len(self.aspect_ratios))
        self.box_head = roi_head.BoxHead(self.num_classes, self.head_width)
        self.roi_logit = ProjectionLogit() if self.roi_pool == "lip" else None

    def _check_fields(self):
        """A ValueError naming the first field that cannot make a detector."""
        for name in ("num_classes", "features", "pre_nms", "rpn_samples", "roi_samples",
                     "pooled_size", "sampling_ratio", "head_width", "max_detections"):
            positive_int(name, getattr(self, name))
        positive_ints("proposals", self.proposals, 2)
        sizes = [positive_floats(f"anchor_sizes[{l}]", level)
                 for l, level in enumerate(self.anchor_sizes)]
        positive_floats("aspect_ratios", self.aspect_ratios)
        if len({len(level) for level in sizes}) != 1:
            raise ValueError(f"anchor_sizes {self.anchor_sizes}: expected one or more levels, "
                             "with as many sizes on every level")
        for name in ("rpn_nms_iou", "nms_iou", "score_threshold"):
            unit_interval(name, getattr(self, name))

    def _check_ground_truth(self, images, gt_boxes, gt_labels):
        """A ValueError or TypeError naming ground truth that breaks `losses`' contract:
        shapes and dtypes always, values where concrete (`check_objects`)."""
        n, boxes_shape = images.shape[0], jnp.shape(gt_boxes)
        if boxes_shape[:1] + boxes_shape[2:] != (n, 4) or jnp.shape(gt_labels) != boxes_shape[:2]:
            raise ValueError(f"gt_boxes of shape {boxes_shape} and gt_labels of shape "
                             f"{jnp.shape(gt_labels)}: expected (N, M, 4) and (N, M), N = {n}")
        dtype = getattr(gt_labels, "dtype", None) or jnp.result_type(gt_labels)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"gt_labels of dtype {dtype}: expected integer class ids "
                            f"1..{self.num_classes} (0 on padding rows)")
        if self.roi_samples > self.proposals[0] + boxes_shape[1]:
            raise ValueError(f"roi_samples {self.roi_samples} exceeds the candidates: "
                             f"{self.proposals[0]} proposals + {boxes_shape[1]} objects")
        check_objects(gt_boxes, gt_labels, self.num_classes)

    def _first_stage(self, images, train: bool):
        """Pyramid, anchors `(A, 4)`, RPN logits `(N, A)` and deltas `(N, A, 4)`, proposals
        `(N, P, 4)` and their validity `(N, P)`."""
        stages = self.backbone(images, train=train)
        if not isinstance(stages, dict):
            raise ValueError("the backbone must return its stage outputs (a dict C2..C5): "
                             "build it with create_model(..., features_only=True)")
        pyramid = self.fpn(stages)
        names = sorted(pyramid, key=lambda k: int(k[1:]))  # P2 .. P5: level l, stride 2**l
        if len(names) != len(self.anchor_sizes):
            raise ValueError(f"anchor_sizes has {len(self.anchor_sizes)} levels for the "
                             f"pyramid's {len(names)} ({', '.join(names)})")
        logits, deltas = self.rpn_head([pyramid[k] for k in names])
        anchors = jnp.asarray(pyramid_anchors(
            [pyramid[k].shape[1:3] for k in names], [2 ** int(k[1:]) for k in names],
            self.anchor_sizes, self.aspect_ratios))
        image_size = images.shape[1:3]
        proposals, valid = jax.vmap(lambda l, d: rpn.propose(
            anchors, l, d, image_size, pre_nms=min(self.pre_nms, anchors.shape[0]),
            post_nms=self.proposals[0 if train else 1], iou_threshold=self.rpn_nms_iou))(
            jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas))
        return pyramid, anchors, logits, deltas, proposals, valid

    def _second_stage(self, pyramid, rois):
        """Box head outputs of RoIs `(N, R, 4)`: `(N, R, C + 1)`, `(N, R, C, 4)`."""
        n, r = rois.shape[:2]
        batch = jnp.repeat(jnp.arange(n, dtype=rois.dtype), r)[:, None]
        pyramid = {f"P{l}": pyramid[f"P{l}"] for l in self.roi_levels}
        logits = None if self.roi_logit is None else {k: self.roi_logit(v)
                                                      for k, v in pyramid.items()}
        pooled = roi_head.pool_rois(
            pyramid, logits, jnp.concatenate([batch, rois.reshape(-1, 4)], axis=1),
            self.pooled_size, sampling_ratio=self.sampling_ratio,
            canonical_size=self.canonical_size, canonical_level=4)
        class_logits, deltas = self.box_head(pooled)
        return class_logits.reshape(n, r, -1), deltas.reshape(n, r, self.num_classes, 4)

    def losses(self, images, gt_boxes, gt_labels, train: bool = True) -> dict:
        """The four Faster R-CNN losses, averaged over the batch: `rpn_objectness`,
        `rpn_box` (per sampled anchor), `roi_class`, `roi_box` (per sampled RoI).

        Ground truth: `gt_boxes` `(N, M, 4)` `(x1, y1, x2, y2)` in pixels, integer
        `gt_labels` `(N, M)`: 1..num_classes for an object, whose box must be finite with
        `x2 > x1` and `y2 > y1`, 0 on padding rows (their boxes are ignored). Concrete
        values are checked (`check_objects`); traced ones (under jit) cannot be: there a
        negative label counts as padding, an object with a degenerate or non-finite box
        matches nothing (never a positive), and a label above num_classes makes the RoI
        losses NaN."""
        self._check_ground_truth(images, gt_boxes, gt_labels)
        n = images.shape[0]
        pyramid, anchors, logits, deltas, proposals, valid = self._first_stage(images, train)
        gt_valid = gt_labels > 0
        rpn_keys, roi_keys = jnp.split(jax.random.split(self.make_rng("sample"), 2 * n), 2)
        objectness, rpn_box = jax.vmap(lambda k, l, d, b, v: rpn.rpn_losses(
            k, anchors, l, d, b, v, num_samples=self.rpn_samples, positive_fraction=0.5,
            positive_iou=0.7, negative_iou=0.3))(rpn_keys, logits, deltas, gt_boxes, gt_valid)
        rois, labels, targets, used = jax.vmap(lambda k, p, pv, b, l, v: roi_head.roi_targets(
            k, p, pv, b, l, v, num_samples=self.roi_samples, positive_fraction=0.25,
            positive_iou=0.5))(roi_keys, proposals, valid, gt_boxes, gt_labels, gt_valid)
        class_logits, box_deltas = self._second_stage(pyramid, rois)
        roi_class, roi_box = roi_head.roi_losses(class_logits, box_deltas, labels, targets,
                                                 used)
        per_anchor = n * self.rpn_samples
        return {"rpn_objectness": jnp.sum(objectness) / per_anchor,
                "rpn_box": jnp.sum(rpn_box) / per_anchor, "roi_class": roi_class,
                "roi_box": roi_box}

    def detect(self, images) -> dict:
        """Detections per image, best first: `boxes` `(N, D, 4)`, `scores` `(N, D)`,
        `labels` `(N, D)` (1-based), `valid` `(N, D)` (D = `max_detections`)."""
        pyramid, _, _, _, proposals, valid = self._first_stage(images, train=False)
        class_logits, deltas = self._second_stage(pyramid, proposals)
        boxes, scores, labels, ok = jax.vmap(lambda c, d, p, v: roi_head.detect(
            c, d, p, v, images.shape[1:3], score_threshold=self.score_threshold,
            iou_threshold=self.nms_iou, max_detections=self.max_detections))(
            class_logits, deltas, proposals, valid)
        return {"boxes": boxes, "scores": scores, "labels": labels, "valid": ok}
