"""Two-stage detection with LIP: Faster R-CNN with a feature pyramid whose RoI pooling is
RoIAlign ("align") or RoI-LIP ("lip"), trained with optax, evaluated with pycocotools.

    anchors.py   anchor boxes of a pyramid          boxes.py     IoU, clipping, box coding
    nms.py       greedy NMS, static shapes          sampling.py  matching, balanced samples
    fpn.py       the feature pyramid                rpn.py       RPN head, proposals, losses
    roi_head.py  RoI pooling, box head, targets, losses, detections
    model.py     `FasterRCNN`                       train.py     optimizer, train/detect steps
    coco.py      COCO results format, pycocotools evaluation
"""

from lip_jax.detection.model import ROI_POOLS, FasterRCNN

__all__ = ["FasterRCNN", "ROI_POOLS"]
