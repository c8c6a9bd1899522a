"""COCO evaluation through pycocotools: detections in COCO results format, and the
twelve numbers of `COCOeval.summarize()` by name."""

import contextlib
import copy
import io

import numpy as np

METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S",
           "AR_M", "AR_L")
"""`COCOeval.stats` in order: AP at IoU .50:.95, .50, .75, for small / medium / large
objects, then average recall at 1, 10, 100 detections and by size. -1 where a size has no
ground truth."""


def to_results(image_ids, boxes, scores, labels, valid, *, box_decimals: int = 1,
               score_decimals: int = 3) -> list[dict]:
    """COCO results (`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`) of
    detections `boxes` `(N, D, 4)` `(x1, y1, x2, y2)`, `scores`, `labels` (category ids)
    and `valid` `(N, D)` for images `image_ids` `(N,)`, rounded; a detection whose rounded
    score is 0 is left out."""
    results = []
    for image_id, b, s, l, v in zip(image_ids, *map(np.asarray, (boxes, scores, labels,
                                                                  valid))):
        for (x1, y1, x2, y2), score, label in zip(b[v], s[v], l[v]):
            score = round(float(score), score_decimals)
            if score > 0:
                xywh = [round(float(t), box_decimals) for t in (x1, y1, x2 - x1, y2 - y1)]
                results.append({"image_id": int(image_id), "category_id": int(label),
                                "bbox": xywh, "score": score})
    return results


def evaluate(ground_truth: dict, results: list[dict]) -> dict:
    """pycocotools' bounding-box evaluation of `results` against the COCO dataset dict
    `ground_truth`, over all of its images: `{name: value}` for `METRICS`, in [0, 1]
    (-1 where undefined). No result gives 0 for every defined metric."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = _coco(copy.deepcopy(ground_truth))
        detections = gt.loadRes(copy.deepcopy(results)) if results else _coco(
            {**ground_truth, "annotations": []})  # loadRes refuses an empty list
        evaluation = COCOeval(gt, detections, "bbox")
        evaluation.params.imgIds = sorted(gt.getImgIds())
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(v) for name, v in zip(METRICS, evaluation.stats)}


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco
