"""The detection_shapes dataset: deterministic, COCO-format, small and medium objects."""

import numpy as np
import pytest

from lip_jax import data
from lip_jax.data import detection_shapes
from lip_jax.detection.boxes import pairwise_iou


def test_images_are_a_pure_function_of_seed_split_and_index():
    a, b = detection_shapes.example(5), detection_shapes.example(5)
    for key in ("image", "boxes", "labels"):
        np.testing.assert_array_equal(a[key], b[key])
    others = [detection_shapes.example(5, "val"), detection_shapes.example(5, seed=1),
              detection_shapes.example(6)]
    assert all(not np.array_equal(a["image"], o["image"]) for o in others)
    with pytest.raises(IndexError, match="out of range"):
        detection_shapes.example(detection_shapes.SPLITS["val"][1], "val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        detection_shapes.load("test")
    with pytest.raises(ValueError, match="count 0"):
        detection_shapes.load("val", count=0)


def test_objects_are_inside_apart_labelled_and_span_small_and_medium():
    examples = [detection_shapes.example(i) for i in range(40)]
    size = detection_shapes.IMAGE_SIZE
    areas = []
    for e in examples:
        boxes, labels = e["boxes"], e["labels"]
        assert e["image"].shape == (size, size, 1) and e["image"].dtype == np.uint8
        assert 1 <= len(labels) <= detection_shapes.MAX_OBJECTS
        assert ((labels >= 1) & (labels <= len(detection_shapes.CLASSES))).all()
        assert ((boxes >= 0) & (boxes <= size)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        iou = np.asarray(pairwise_iou(boxes, boxes))
        assert (iou[~np.eye(len(labels), dtype=bool)] == 0).all()  # objects never overlap
        areas.extend(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))
    areas = np.array(areas)
    assert (areas < 32**2).sum() > 100 and (areas >= 32**2).sum() > 30
    assert areas.max() < 96**2  # no COCO "large" object fits the budget of 64 px
    padded = detection_shapes.load("train", count=40)
    for i in (0, 17, 39):
        n = len(examples[i]["labels"])
        np.testing.assert_array_equal(padded["boxes"][i, :n], examples[i]["boxes"])
        assert (padded["labels"][i, n:] == 0).all() and (padded["boxes"][i, n:] == 0).all()


def test_validation_ground_truth_is_coco_with_hundreds_of_small_and_medium_objects():
    coco = pytest.importorskip("pycocotools.coco")
    gt = detection_shapes.coco_ground_truth("val")
    index = coco.COCO()
    index.dataset = gt
    index.createIndex()
    val = detection_shapes.load("val")
    assert len(index.getImgIds()) == len(val["image"]) == detection_shapes.SPLITS["val"][1]
    assert len(index.getAnnIds()) == int((val["labels"] > 0).sum())
    assert [c["name"] for c in gt["categories"]] == list(detection_shapes.CLASSES)
    first = index.loadAnns(index.getAnnIds(imgIds=[0]))
    x1, y1, x2, y2 = val["boxes"][0, 0]
    assert first[0]["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert first[0]["area"] == (x2 - x1) * (y2 - y1)
    areas = np.array([a["area"] for a in gt["annotations"]])
    assert (areas < 32**2).sum() >= 300 and ((areas >= 32**2) & (areas < 96**2)).sum() >= 300


def test_listed_apart_from_the_classification_datasets():
    assert data.DETECTION_DATASETS["detection_shapes"] is detection_shapes
    assert "detection_shapes" not in data.DATASETS
