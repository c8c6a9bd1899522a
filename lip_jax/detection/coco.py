"""COCO evaluation through pycocotools: detections in COCO results format, and the
twelve numbers of `COCOeval.summarize()` by name."""

from collections.abc import Mapping
import contextlib
import copy
import io
import math
import numbers

import numpy as np

METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S",
           "AR_M", "AR_L")
"""`COCOeval.stats` in order: AP at IoU .50:.95, .50, .75, for small / medium / large
objects, then average recall at 1, 10, 100 detections and by size. -1 where a size has no
ground truth."""

ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")  # of each
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")  # ground-truth annotation, result


def to_results(image_ids, boxes, scores, labels, valid, *, box_decimals: int = 1,
               score_decimals: int = 3) -> list[dict]:
    """COCO results (`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`) of
    detections `boxes` `(N, D, 4)` `(x1, y1, x2, y2)`, `scores`, integer `labels` (category
    ids) and bool `valid` `(N, D)` for integer `image_ids` `(N,)`, rounded; a detection
    whose rounded score is not positive is left out. Valid detections must be finite."""
    image_ids, boxes, scores, labels, valid = map(np.asarray, (image_ids, boxes, scores, labels,
                                                                valid))
    _check_detections(image_ids, boxes, scores, labels, valid)
    results = []
    for n, d in zip(*np.nonzero(valid)):
        score = round(float(scores[n, d]), score_decimals)
        if score > 0:
            x1, y1, x2, y2 = map(float, boxes[n, d])
            xywh = [round(t, box_decimals) for t in (x1, y1, x2 - x1, y2 - y1)]
            results.append({"image_id": int(image_ids[n]), "category_id": int(labels[n, d]),
                            "bbox": xywh, "score": score})
    return results


def _check_detections(image_ids, boxes, scores, labels, valid) -> None:
    """`to_results`' contract on its (NumPy) arguments: a ValueError or TypeError naming the
    first argument or detection that breaks it."""
    n_d = boxes.shape[:2]
    if (boxes.shape != n_d + (4,) or image_ids.shape != n_d[:1]
            or any(x.shape != n_d for x in (scores, labels, valid))):
        raise ValueError(f"image_ids {image_ids.shape}, boxes {boxes.shape}, scores "
                         f"{scores.shape}, labels {labels.shape}, valid {valid.shape}: expected "
                         "(N,), (N, D, 4), (N, D), (N, D), (N, D)")
    if valid.dtype != bool:
        raise TypeError(f"valid of dtype {valid.dtype}: expected a bool mask (N, D)")
    for name, ids in (("image_ids", image_ids), ("labels", labels)):
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} of dtype {ids.dtype}: expected integer ids")
    finite = np.isfinite(boxes).all(axis=-1) & np.isfinite(scores)
    for n, d in np.argwhere(valid & ~finite)[:1]:
        raise ValueError(f"detection {d} of image {n} (image_id {image_ids[n]}): box "
                         f"{boxes[n, d].tolist()} and score {scores[n, d]}: expected finite "
                         "values")


def evaluate(ground_truth: dict, results: list[dict]) -> dict:
    """pycocotools' bounding-box evaluation of `results` (a list of dicts with
    `RESULT_KEYS`, finite `bbox` `[x, y, w, h]` and `score`, ids of the ground truth's
    images and categories) against the COCO dataset dict `ground_truth`, over all of its
    images: `{name: value}` for `METRICS`, in [0, 1] (-1 where undefined). No result gives
    0 for every defined metric."""
    from pycocotools.cocoeval import COCOeval

    images, categories = _check_ground_truth(ground_truth)
    results = _check_results(results, images, categories)
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


def _entries(name: str, entries, keys) -> list:
    """`entries` as a list; a TypeError or ValueError naming `name` unless it is a list (or
    tuple) of dicts that hold `keys`."""
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f"{name} must be a list of dicts, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or any(key not in entry for key in keys):
            raise ValueError(f"{name}[{i}] = {entry!r:.100}: expected a dict with keys "
                             f"{', '.join(keys)}")
    return list(entries)


def _check_ground_truth(ground_truth) -> tuple[set, set]:
    """The image ids and category ids of a COCO dataset dict; a TypeError or ValueError
    naming what it lacks."""
    if not isinstance(ground_truth, Mapping):
        raise TypeError(f"ground_truth must be a COCO dataset dict, got "
                        f"{type(ground_truth).__name__}")
    for key, keys in (("images", ("id",)), ("categories", ("id",)),
                      ("annotations", ANNOTATION_KEYS)):
        if key not in ground_truth:
            raise ValueError(f"ground_truth has no {key!r}: expected a COCO dataset dict with "
                             "images, categories and annotations")
        _entries(f"ground_truth[{key!r}]", ground_truth[key], keys)
    return ({image["id"] for image in ground_truth["images"]},
            {category["id"] for category in ground_truth["categories"]})


def _finite_numbers(values, count: int) -> bool:
    """Whether `values` are `count` finite real numbers."""
    try:
        values = list(values)
    except TypeError:
        return False
    return len(values) == count and all(
        isinstance(v, numbers.Real) and math.isfinite(v) for v in values)


def _check_results(results, images: set, categories: set) -> list[dict]:
    """`results` as a list; a TypeError or ValueError naming the first result that is not
    of `RESULT_KEYS`, finite, on one of `images`, or the unknown category ids."""
    results = _entries("results", results, RESULT_KEYS)
    for i, result in enumerate(results):
        if result["image_id"] not in images:
            raise ValueError(f"results[{i}] has image_id {result['image_id']!r}, not an image "
                             "of ground_truth")
        if not (_finite_numbers(result["bbox"], 4) and _finite_numbers([result["score"]], 1)):
            raise ValueError(f"results[{i}] has bbox {result['bbox']!r} and score "
                             f"{result['score']!r}: expected 4 finite numbers [x, y, w, h] "
                             "and a finite score")
    unknown = list(dict.fromkeys(r["category_id"] for r in results
                                 if r["category_id"] not in categories))
    if unknown:
        raise ValueError(f"results have category_id {unknown}, not categories of ground_truth "
                         f"{sorted(categories, key=repr)}")
    return results


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco
