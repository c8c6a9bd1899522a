"""The detector: box coding, NMS, anchors, sampling, RoI pooling (= RoIAlign for "align"),
COCO evaluation (= pycocotools on files), and training that lowers the loss."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax.data import detection_shapes
from lip_jax.detection import coco, train
from lip_jax.detection.anchors import level_anchors, pyramid_anchors
from lip_jax.detection.boxes import area, decode, encode, pairwise_iou
from lip_jax.detection.fpn import FPN
from lip_jax.detection.model import FasterRCNN, check_objects
from lip_jax.detection.nms import batched_nms, nms
from lip_jax.detection.roi_head import BOX_WEIGHTS, pool_rois
from lip_jax.detection.sampling import balanced_sample, match, sample_indices
from lip_jax.models import create_model
from lip_jax.testing import reference

RNG = np.random.default_rng(0)


def random_boxes(count, low=0.0, high=60.0, min_size=2.0, max_size=30.0):
    corner = RNG.uniform(low, high, (count, 2))
    return np.concatenate([corner, corner + RNG.uniform(min_size, max_size, (count, 2))],
                          axis=1).astype(np.float32)


def test_iou_by_hand_and_coding_round_trip():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(pairwise_iou(a, b), [[50 / 150, 0], [0, 0]], rtol=1e-6)
    boxes, reference = random_boxes(50), random_boxes(50)
    for weights in ((1.0, 1.0, 1.0, 1.0), BOX_WEIGHTS):
        deltas = encode(boxes, reference, weights)
        np.testing.assert_allclose(decode(deltas, reference, weights), boxes, atol=1e-4)
    np.testing.assert_allclose(encode(reference, reference), 0.0, atol=1e-6)


def nms_numpy(boxes, scores, threshold):
    """torchvision's rule stated directly: visit by decreasing score, keep a box unless a
    kept one overlaps it by more than `threshold`."""
    iou = np.asarray(pairwise_iou(boxes, boxes))
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if np.isfinite(scores[i]) and all(iou[i, j] <= threshold for j in keep):
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_equals_the_greedy_rule(threshold):
    boxes = np.repeat(random_boxes(20, high=40.0), 4, axis=0)  # clusters of 4 jittered boxes
    boxes = (boxes + RNG.normal(0, 1.5, boxes.shape)).astype(np.float32)
    scores = RNG.uniform(size=80).astype(np.float32)
    scores[:5] = -np.inf  # not candidates
    scores[10:14] = scores[20]  # ties
    expected = nms_numpy(boxes, scores, threshold)
    assert 10 < len(expected) < 75
    for max_output in (80, 10):  # room for all, and fewer slots than kept boxes
        index, valid = jax.jit(nms, static_argnums=(2, 3))(boxes, scores, threshold,
                                                           max_output)
        assert list(np.asarray(index)[np.asarray(valid)]) == expected[:max_output]


def test_batched_nms_never_suppresses_across_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    index, valid = batched_nms(boxes, scores, np.array([1, 1, 2]), 0.5, 3)
    assert list(np.asarray(index)[np.asarray(valid)]) == [0, 2]


def test_anchors_tile_each_level_at_cell_centres():
    anchors = pyramid_anchors([(16, 8), (8, 4)], (4, 8), ((8.0,), (16.0, 32.0)),
                              (0.5, 1.0, 2.0))
    assert anchors.shape == (16 * 8 * 3 + 8 * 4 * 6, 4)
    first = anchors[:3]  # cell (0, 0) of the stride-4 level
    np.testing.assert_allclose((first[:, :2] + first[:, 2:]) / 2, 2.0)
    size = first[:, 2:] - first[:, :2]
    np.testing.assert_allclose(size.prod(1), 64.0, rtol=1e-5)
    np.testing.assert_allclose(size[:, 1] / size[:, 0], [0.5, 1.0, 2.0], rtol=1e-5)
    last = anchors[-1]  # last cell of the stride-8 level, size 32, ratio 2
    np.testing.assert_allclose((last[:2] + last[2:]) / 2, [28.0, 60.0])


def test_matching_and_balanced_sampling():
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 0, 0]], np.float32)
    candidates = np.array([[0, 0, 10, 10], [0, 0, 10, 12], [49, 49, 55, 55], [30, 30, 40, 40]],
                          np.float32)
    best, iou = match(candidates, gt, np.array([True, True, False]))
    assert list(np.asarray(best[:3])) == [0, 0, 1] and float(iou[3]) == 0.0
    _, low = match(candidates, gt, np.array([True, True, False]), low_quality=True)
    assert float(low[2]) == 1.0  # the only candidate of the second object counts as positive
    positive, negative = np.arange(100) < 30, np.arange(100) >= 30
    pos, neg = balanced_sample(jax.random.key(0), positive, negative, 20, 0.25)
    assert int(pos.sum()) == 5 and int(neg.sum()) == 15
    assert not (pos & ~positive).any() and not (neg & ~negative).any()
    few = np.arange(8) < 4  # 4 positives, no negatives: 2 drawn (half of 4 slots), 2 empty
    index, is_pos, used = sample_indices(jax.random.key(1), few, ~few & False, 4, 0.5)
    assert int(used.sum()) == 2 and set(np.asarray(index)[np.asarray(used)]) <= {0, 1, 2, 3}
    assert bool(is_pos[used].all())


def test_align_pooling_is_roi_align_on_each_rois_level():
    """`pool_rois` without logits against the NumPy statement of torchvision's RoIAlign,
    each RoI on the level FPN's rule gives it (sqrt(area) 32 -> P3, 64 -> P4), values and
    gradients."""
    pyramid = {f"P{l}": RNG.standard_normal((2, 64 >> l, 64 >> l, 3)).astype(np.float32)
               for l in (2, 3, 4)}
    rois = np.array([[0, 3.0, 5.0, 13.0, 11.0],   # sqrt(area) 7.7 -> P2
                     [1, 10.0, 2.0, 42.0, 34.0],  # 32 -> P3
                     [0, 20.0, 30.0, 70.0, 76.0],  # 48 -> P3, beyond the image
                     [1, -8.0, 0.0, 60.0, 60.0],  # 63.9 -> P3
                     [1, 0.0, 0.0, 64.0, 64.0]],  # 64 -> P4
                    np.float32)
    levels = [2, 3, 3, 3, 4]
    cot = RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)
    pool = jax.jit(lambda p: pool_rois(p, None, rois, (3, 3), sampling_ratio=2,
                                       canonical_size=64.0, canonical_level=4))
    out, vjp = jax.vjp(pool, pyramid)
    grads = vjp(cot)[0]
    expected_grads = {k: np.zeros_like(v) for k, v in pyramid.items()}
    for k, level in enumerate(levels):
        args = (pyramid[f"P{level}"], rois[k:k + 1], (3, 3), 2.0 ** -level, 2, True)
        expected = reference.roi_align(*args)
        (grad,) = reference.vjp(reference.roi_align, cot[k:k + 1], *args)
        np.testing.assert_allclose(out[k:k + 1], expected, rtol=1e-5, atol=1e-6)
        expected_grads[f"P{level}"] += grad
    for key, grad in expected_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-5, atol=1e-6)
    # Constant logits (a zero-initialised RoI-LIP head) pool as RoIAlign but for samples
    # outside the map, which read logit 0: RoI 2 reaches beyond the image.
    constant = {k: np.full(v.shape[:-1] + (1,), 6.0, np.float32) for k, v in pyramid.items()}
    lip = pool_rois(pyramid, constant, rois, (3, 3), sampling_ratio=2, canonical_size=64.0,
                    canonical_level=4)
    inside = np.array([0, 1, 4])
    np.testing.assert_allclose(lip[inside], out[inside], rtol=1e-5, atol=1e-6)
    assert np.abs(lip[2] - out[2]).max() > 1e-2


def test_evaluation_of_a_hand_made_case_equals_pycocotools_on_files(tmp_path):
    """Two images: class 1 scores TP (IoU 1), FP, TP (IoU 0.83), so its AP50 is
    (51 * 1 + 50 * 2/3) / 101 on COCO's 101 recall points; class 2's one TP has IoU 0.78
    (AP50 1). A high-scoring invalid slot must not count."""
    pycocotools = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": i, "width": 64, "height": 64} for i in (0, 1)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [
              {"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
               "iscrowd": 0},
              {"id": 2, "image_id": 0, "category_id": 1, "bbox": [20, 20, 20, 20], "area": 400,
               "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 2, "bbox": [5, 5, 45, 45], "area": 2025,
               "iscrowd": 0}]}
    boxes = np.array([[[0, 0, 10, 10], [40, 0, 50, 10], [20, 20, 40, 44], [0, 0, 10, 10]],
                      [[5, 5, 50, 40], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.95], [0.6, 0, 0, 0]], np.float32)
    labels = np.array([[1, 1, 1, 2], [2, 1, 1, 1]])
    valid = np.array([[True, True, True, False], [True, False, False, False]])
    results = coco.to_results([0, 1], boxes, scores, labels, valid)
    assert len(results) == 4 and results[2]["bbox"] == [20.0, 20.0, 20.0, 24.0]
    ours = coco.evaluate(gt, results)
    np.testing.assert_allclose(ours["AP50"], ((51 + 50 * 2 / 3) / 101 + 1) / 2, rtol=1e-9)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    truth = pycocotools.COCO(str(tmp_path / "gt.json"))
    evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "dt.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    np.testing.assert_array_equal([ours[k] for k in coco.METRICS], evaluation.stats)
    assert ours["AP_L"] == -1.0
    none = coco.evaluate(gt, [])
    assert none["AP"] == 0.0 and none["AP_S"] == 0.0 and none["AP_L"] == -1.0


def test_a_few_training_steps_reduce_the_loss_and_detections_are_boxes_best_first():
    """A tiny LIP-backbone, RoI-LIP detector (one compilation of each step, so one test):
    six steps on two images with the same anchor and RoI samples lower the loss; then its
    detections are boxes in the image with valid labels, best first."""
    backbone = create_model("resnet18", pool="lip", features_only=True, width=8,
                            logit_width=8, stage_sizes=(1, 1, 1, 1))
    model = FasterRCNN(backbone, len(detection_shapes.CLASSES), "lip", features=16,
                       pre_nms=200, proposals=(32, 16), rpn_samples=64, roi_samples=16,
                       head_width=32, max_detections=10)
    tx, _ = train.make_optimizer(0.02, total_steps=10_000, warmup_steps=0)
    kw = dict(model=model, mean=detection_shapes.MEAN, std=detection_shapes.STD)
    batch = detection_shapes.load("train", count=2)
    state = jax.jit(functools.partial(train.init_state, tx=tx, **kw))(jax.random.key(0), batch)
    assert "roi_logit" in state.params
    step = jax.jit(functools.partial(train.train_step, tx=tx, **kw))
    key, losses = jax.random.key(1), []
    for _ in range(6):
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 6

    out = jax.device_get(jax.jit(functools.partial(train.detect, **kw))(state, batch["image"]))
    assert out["boxes"].shape == (2, 10, 4) and out["scores"].shape == (2, 10)
    assert out["valid"].any()
    size = detection_shapes.IMAGE_SIZE
    for boxes, scores, labels, valid in zip(out["boxes"], out["scores"], out["labels"],
                                            out["valid"]):
        assert ((boxes[valid] >= 0) & (boxes[valid] <= size)).all()
        assert (np.diff(scores[valid]) <= 0).all() and (scores[valid] > 0.05).all()
        assert set(labels[valid]) <= set(range(1, len(detection_shapes.CLASSES) + 1))


@pytest.mark.parametrize("fields, inputs, match", [
    (dict(num_classes=0), {}, "num_classes must be a positive int, got 0"),
    (dict(anchor_sizes=((16,), (32, 64), (64,), (128,))), {}, "with as many sizes on every"),
    (dict(anchor_sizes=((16,), (32,), (64,))), {}, "anchor_sizes has 3 levels for the "
                                                    r"pyramid's 4 \(P2, P3, P4, P5\)"),
    (dict(aspect_ratios=()), {}, r"aspect_ratios must be one or more finite positive numbers, "
                                 r"got \(\)"),
    (dict(proposals=(0, 0)), {}, r"proposals must be 2 positive ints, got \(0, 0\)"),
    (dict(nms_iou=1.5), {}, r"nms_iou must be in \[0, 1\], got 1.5"),
    (dict(backbone=False), {}, r"the backbone must return its stage outputs"),
    ({}, dict(boxes=jnp.zeros((1, 4))), r"gt_boxes of shape \(1, 4\) and gt_labels of shape "
                                        r"\(1, 1\): expected \(N, M, 4\) and \(N, M\), N = 1"),
])
def test_bad_detector_fields_and_ground_truth_are_named(fields, inputs, match):
    """They failed deep inside (ZeroDivisionError, broadcasting, indexing errors)."""
    fields = dict(fields)
    features_only = fields.pop("backbone", True)
    backbone = create_model("resnet18", features_only=features_only, width=8,
                            stage_sizes=(1, 1, 1, 1))
    model = FasterRCNN(backbone, **{"num_classes": 6, **fields})
    args = dict(images=jnp.zeros((1, 64, 64, 1)), boxes=jnp.zeros((1, 1, 4)),
                labels=jnp.ones((1, 1), jnp.int32)) | inputs
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(functools.partial(model.init, method=FasterRCNN.losses),
                       {"params": jax.random.key(0), "sample": jax.random.key(1)},
                       *args.values())


def test_unknown_roi_pool_is_named():
    backbone = create_model("resnet18", features_only=True, width=8, stage_sizes=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown roi_pool 'max'"):
        FasterRCNN(backbone, 6, "max").init(
            {"params": jax.random.key(0), "sample": jax.random.key(1)},
            jnp.zeros((1, 64, 64, 1)), jnp.zeros((1, 1, 4)), jnp.ones((1, 1), jnp.int32),
            method=FasterRCNN.losses)


def tiny_detector():
    backbone = create_model("resnet18", features_only=True, width=8, stage_sizes=(1, 1, 1, 1))
    return FasterRCNN(backbone, 6)


def test_float_gt_labels_are_named():
    """optax failed with "Expected ... subdtype of integer", naming no argument."""
    model = tiny_detector()
    with pytest.raises(TypeError, match=r"gt_labels of dtype float32: expected integer class "
                                        r"ids 1..6 \(0 on padding rows\)"):
        jax.eval_shape(functools.partial(model.init, method=FasterRCNN.losses),
                       {"params": jax.random.key(0), "sample": jax.random.key(1)},
                       jnp.zeros((1, 64, 64, 1)), jnp.zeros((1, 1, 4)), jnp.ones((1, 1)))


@pytest.mark.parametrize("box, label, match", [
    ([8, 8, 30, 30], 7, r"gt object 1 of image 0 has label 7: expected 1..6"),  # NaN losses
    ([8, 8, 30, 30], -1, r"gt object 1 of image 0 has label -1: expected 1..6"),  # padding
    ([8, 8, 8, 30], 2, r"gt object 1 of image 0 has box \[8.0, 8.0, 8.0, 30.0\]: expected "
                       r"finite \(x1, y1, x2, y2\) with x2 > x1"),  # ignored
    ([30, 30, 8, 8], 2, r"has box \[30.0, 30.0, 8.0, 8.0\]"),
    ([np.nan, 8, 30, 30], 2, r"has box \[nan, 8.0, 30.0, 30.0\]"),
])
def test_concrete_ground_truth_is_checked(box, label, match):
    """Out-of-range labels and degenerate boxes of objects were used or dropped silently."""
    boxes = np.array([[[0, 0, 10, 10], box, [0, 0, 0, 0]]], np.float32)
    labels = np.array([[1, label, 0]])  # a padding row's box is not checked
    with pytest.raises(ValueError, match=match):
        check_objects(boxes, labels, 6)
    check_objects(jnp.asarray(boxes[:, :1]), jnp.asarray(labels[:, :1]), 6)
    with pytest.raises(ValueError, match=match):  # the model checks before running
        tiny_detector().init({"params": jax.random.key(0), "sample": jax.random.key(1)},
                             jnp.zeros((1, 64, 64, 1)), boxes, labels,
                             method=FasterRCNN.losses)


COCO_GT = {"images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                            "area": 400, "iscrowd": 0},
                           {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 30, 30],
                            "area": 900, "iscrowd": 0}]}
PERFECT = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
           {"image_id": 2, "category_id": 2, "bbox": [5, 5, 30, 30], "score": 0.9}]
NAN = float("nan")


@pytest.mark.parametrize("change, match", [
    (dict(bbox=[NAN] * 4), r"results\[0\] has bbox \[nan, nan, nan, nan\] and score 0.9: "
                           r"expected 4 finite numbers"),  # AP 1.0
    (dict(bbox=[NAN, 10, 20, 20]), r"results\[0\] has bbox \[nan, 10, 20, 20\]"),  # AP 1.0
    (dict(score=NAN), r"results\[0\] has bbox \[10, 10, 20, 20\] and score nan"),
    (dict(bbox=[10, 10, 20]), r"results\[0\] has bbox \[10, 10, 20\]"),
    (dict(category_id=7), r"results have category_id \[7\], not categories of ground_truth "
                          r"\[1, 2\]"),  # dropped: AP 1.0
    (dict(image_id=99), r"results\[0\] has image_id 99, not an image of ground_truth"),
    (dict(image_id="1"), r"results\[0\] has image_id '1', not an image of ground_truth"),
])
def test_coco_evaluate_refuses_bad_results(change, match):
    pytest.importorskip("pycocotools")
    with pytest.raises(ValueError, match=match):
        coco.evaluate(COCO_GT, [dict(PERFECT[0], **change), PERFECT[1]])


def test_coco_evaluate_names_unknown_categories_of_off_by_one_labels():
    """0-based labels gave AP 0.0 silently."""
    pytest.importorskip("pycocotools")
    shifted = [dict(r, category_id=r["category_id"] - 1) for r in PERFECT]
    with pytest.raises(ValueError, match=r"category_id \[0\], not categories"):
        coco.evaluate(COCO_GT, shifted)


def without(entries, key):
    return [{k: v for k, v in entry.items() if k != key} for entry in entries]


@pytest.mark.parametrize("gt, results, error, match", [
    (COCO_GT, np.array([[1, 10, 10, 20, 20, .9, 1]]), TypeError,
     "results must be a list of dicts, got ndarray"),
    (COCO_GT, without(PERFECT, "score"), ValueError,
     r"results\[0\] = .*: expected a dict with keys image_id, category_id, bbox, score"),
    (None, PERFECT, TypeError, "ground_truth must be a COCO dataset dict, got NoneType"),
    ({k: v for k, v in COCO_GT.items() if k != "categories"}, PERFECT, ValueError,
     "ground_truth has no 'categories'"),
    ({k: v for k, v in COCO_GT.items() if k != "images"}, PERFECT, ValueError,
     "ground_truth has no 'images'"),
    (dict(COCO_GT, annotations=without(COCO_GT["annotations"], "area")), PERFECT, ValueError,
     r"ground_truth\['annotations'\]\[0\] = .*: expected a dict with keys id, image_id, "
     "category_id, bbox, area, iscrowd"),
    (dict(COCO_GT, annotations=without(COCO_GT["annotations"], "iscrowd")), PERFECT,
     ValueError, r"ground_truth\['annotations'\]\[0\]"),
    (dict(COCO_GT, annotations=without(COCO_GT["annotations"], "id")), PERFECT, ValueError,
     r"ground_truth\['annotations'\]\[0\]"),
])
def test_coco_evaluate_names_bad_inputs(gt, results, error, match):
    """They failed inside pycocotools (KeyError, AssertionError) or on `if results`."""
    pytest.importorskip("pycocotools")
    with pytest.raises(error, match=match):
        coco.evaluate(gt, results)


def test_coco_evaluate_takes_a_tuple_of_results():
    pytest.importorskip("pycocotools")
    assert coco.evaluate(COCO_GT, tuple(PERFECT)) == coco.evaluate(COCO_GT, PERFECT)


DETECTIONS = (np.array([[[0, 0, 10, 10], [5, 5, 8, 8]]], np.float32), np.array([[.9, .8]]),
              np.array([[1, 2]]))


@pytest.mark.parametrize("image_ids, boxes, scores, labels, valid, error, match", [
    ([1], *DETECTIONS, np.array([[1, 0]], np.int32), TypeError,
     r"valid of dtype int32: expected a bool mask \(N, D\)"),  # used as indices
    ([1], *DETECTIONS, np.array([[1.0, 0.0]]), TypeError, "valid of dtype float64"),
    ([], *DETECTIONS, np.array([[True, True]]), ValueError,
     r"image_ids \(0,\), boxes \(1, 2, 4\), scores \(1, 2\), labels \(1, 2\), valid \(1, 2\): "
     r"expected \(N,\), \(N, D, 4\)"),  # returned []
    ([1, 2, 3], *DETECTIONS, np.array([[True, True]]), ValueError, r"image_ids \(3,\)"),
    ([1.7], *DETECTIONS, np.array([[True, True]]), TypeError,
     "image_ids of dtype float64: expected integer ids"),  # became 1
    ([1], DETECTIONS[0], DETECTIONS[1], np.array([[1.5, 2]]), np.array([[True, True]]),
     TypeError, "labels of dtype float64"),
    ([4], np.array([[[NAN, 0, 10, 10], [5, 5, 8, 8]]]), *DETECTIONS[1:],
     np.array([[True, True]]), ValueError, r"detection 0 of image 0 \(image_id 4\): box "
                                           r"\[nan, 0.0, 10.0, 10.0\] and score 0.9: expected "
                                           "finite values"),
    ([4], DETECTIONS[0], np.array([[.9, NAN]]), DETECTIONS[2], np.array([[True, True]]),
     ValueError, r"detection 1 of image 0 \(image_id 4\)"),  # was left out silently
])
def test_coco_to_results_checks_its_arguments(image_ids, boxes, scores, labels, valid, error,
                                              match):
    with pytest.raises(error, match=match):
        coco.to_results(image_ids, boxes, scores, labels, valid)


def test_coco_to_results_skips_invalid_non_finite_detections():
    boxes = np.array([[[0, 0, 10, 10], [NAN, 0, 0, 0]]], np.float32)
    results = coco.to_results([3], boxes, np.array([[.9, NAN]]), DETECTIONS[2],
                              np.array([[True, False]]))
    assert results == [{"image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0],
                        "score": 0.9}]


@pytest.mark.parametrize("call, error, match", [
    (lambda: pyramid_anchors([(2, 2), (1, 1), (1, 1)], [4, 8], [(8,), (16,), (32,)], (1.0,)),
     ValueError, r"map_sizes, strides and sizes have \(3, 2, 3\) levels: expected as many"),
    (lambda: pyramid_anchors([(2, 2), (1, 1)], [4, 8], [(8,)], (1.0,)), ValueError,
     r"have \(2, 2, 1\) levels"),
    (lambda: pyramid_anchors([], [], [], (1.0,)), ValueError, r"have \(0, 0, 0\) levels"),
    (lambda: pyramid_anchors([(2, 2), (1, 1)], [4, 8], (8, 16), (1.0,)), TypeError,
     r"sizes\[0\] must be a sequence of numbers, got 8"),
    (lambda: pyramid_anchors([(2, 2)], [0], [(8,)], (1.0,)), ValueError,
     r"strides\[0\] must be a positive int, got 0"),
    (lambda: level_anchors(2, 2, 4, (), (1.0,)), ValueError,
     r"sizes must be one or more finite positive numbers, got \(\)"),
    (lambda: level_anchors(1, 1, 4, (8,), (0.0,)), ValueError,
     r"aspect_ratios must be one or more finite positive numbers, got \(0.0,\)"),  # inf
    (lambda: level_anchors(1, 1, 4, (8,), (-1.0,)), ValueError, r"got \(-1.0,\)"),  # NaN
])
def test_bad_anchor_arguments_are_named(call, error, match):
    """Lengths were truncated to the shortest; bad ratios gave inf/NaN anchors."""
    with pytest.raises(error, match=match):
        call()


def fpn_shapes(stages, features=8):
    stages = {k: jnp.ones(v) for k, v in stages.items()} if isinstance(stages, dict) else stages
    model = FPN(features)
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), stages), stages))
    return {k: v.shape for k, v in out.items()}


def test_fpn_orders_levels_by_number():
    """C10 sorted before C9 as a string: C9 was taken for the coarser map and its upsampling,
    cropped, added to C10's."""
    stages = {"C10": jnp.ones((1, 2, 2, 4)), "C9": jnp.ones((1, 4, 4, 4))}
    model = FPN(8)
    variables = model.init(jax.random.key(0), stages)
    top_down = {k: jax.grad(lambda c, k=k: model.apply(variables, c)[k].sum())(stages)
                for k in ("P9", "P10")}
    assert not top_down["P10"]["C9"].any() and top_down["P9"]["C10"].any()
    assert fpn_shapes({"C2": (1, 15, 15, 4), "C3": (1, 8, 8, 4)})["P2"] == (1, 15, 15, 8)


@pytest.mark.parametrize("stages, features, error, match", [
    ({"C2": (1, 2, 2, 4), "C3": (1, 4, 4, 4)}, 8, ValueError,  # coarse-to-fine: cropped
     r"C3 of shape \(1, 4, 4, 4\): expected \(N, H, W, C\) = \(1, 1, 1, C\), the batch of C2 "
     r"\(1, 2, 2, 4\) and half its spatial size"),
    ({"C2": (2, 8, 8, 4), "C3": (1, 4, 4, 4)}, 8, ValueError,  # broadcast
     r"C3 of shape \(1, 4, 4, 4\): expected \(N, H, W, C\) = \(2, 4, 4, C\)"),
    ({"C2": (1, 16, 16, 4), "C3": (1, 4, 4, 4)}, 8, ValueError, r"C3 of shape \(1, 4, 4, 4\)"),
    ({"C2": (1, 16, 16, 4), "C4": (1, 8, 8, 4)}, 8, ValueError,
     "stages C2 and C4: expected consecutive levels"),
    ({"res2": (1, 8, 8, 4)}, 8, ValueError, "stage key 'res2': expected 'C<level>'"),  # Pes2
    ({"C2": (1, 8, 8)}, 8, ValueError, r"C2 of shape \(1, 8, 8\): expected \(N, H, W, C\)"),
    ({}, 8, ValueError, "c is empty"),
    ([jnp.ones((1, 8, 8, 4))], 8, TypeError, "c must be a dict of backbone stages .* got list"),
    ({"C2": (1, 8, 8, 4)}, 0, ValueError, "features must be a positive int, got 0"),
])
def test_bad_fpn_inputs_are_named(stages, features, error, match):
    with pytest.raises(error, match=match):
        fpn_shapes(stages, features)


def kept(index, valid):
    return list(np.asarray(index)[np.asarray(valid)])


def test_nms_inf_scores_unused_slots_and_no_boxes():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    index, valid = nms(boxes, np.array([np.inf, 2.0, -np.inf], np.float32), 0.5, 3)
    assert kept(index, valid) == [0, 1]  # +inf is a candidate (it was dropped)
    index, valid = nms(boxes, np.array([1.0, 3.0, 2.0], np.float32), 0.1, 5)
    assert list(np.asarray(index)) == [1, 2, 0, 0, 0]  # unused slots hold 0, not the best box
    for run in (nms, jax.jit(nms, static_argnums=(2, 3))):  # IndexError
        index, valid = run(jnp.zeros((0, 4)), jnp.zeros((0,)), 0.5, 3)
        assert index.shape == (3,) and not valid.any()
    index, valid = batched_nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), int), 0.5, 2)
    assert index.shape == (2,) and not valid.any()  # "zero-size array to reduction"


@pytest.mark.parametrize("scores, classes, threshold, max_output, match", [
    ([1.0, 2.0], None, -0.1, 2, r"iou_threshold must be in \[0, 1\], got -0.1"),  # suppressed
    ([1.0, 2.0], None, 1.5, 2, r"iou_threshold must be in \[0, 1\], got 1.5"),
    ([1.0, 2.0], None, NAN, 2, r"iou_threshold must be in \[0, 1\], got nan"),
    ([1.0, 2.0], None, 0.5, -1, "max_output must be a positive int, got -1"),
    ([1.0, 2.0, 3.0], None, 0.5, 2, r"scores of shape \(3,\): expected \(K,\) = \(2,\), one "
                                    r"per box of boxes \(2, 4\)"),
    ([[1.0], [2.0]], None, 0.5, 2, r"scores of shape \(2, 1\)"),
    ([1.0, 2.0], [[1], [1]], 0.5, 2, r"classes of shape \(2, 1\): expected \(K,\) = \(2,\)"),
])
def test_bad_nms_arguments_are_named(scores, classes, threshold, max_output, match):
    boxes = jnp.array([[0, 0, 1, 1], [5, 5, 6, 6]], jnp.float32)
    args = (boxes, jnp.array(scores), threshold, max_output)
    with pytest.raises(ValueError, match=match):
        nms(*args) if classes is None else batched_nms(*args[:2], jnp.array(classes), *args[2:])


def test_batched_nms_is_exact_for_large_class_ids():
    """Float offsets of classes * 2 * span swallowed the geometry at class ids near 1e5."""
    boxes = np.array([[1000, 1000, 1010, 1010], [1000, 1001, 1010, 1011],  # IoU 0.82
                      [1000, 1004, 1010, 1014]], np.float32)
    scores = np.array([3.0, 2.0, 1.0], np.float32)
    for cls in (1, 100_000, 2**31 - 1, -5):
        assert kept(*batched_nms(boxes, scores, np.full(3, cls), 0.5, 3)) == [0, 2]
    big = np.array([2**31 - 1, 2**31 - 2, 2**31 - 1])
    assert kept(*batched_nms(boxes, scores, big, 0.5, 3)) == [0, 1, 2]


@pytest.mark.parametrize("call, match", [
    (lambda: pairwise_iou(jnp.zeros((1, 5)), jnp.zeros((1, 5))),
     r"a of shape \(1, 5\): expected \(K, 4\) boxes \(x1, y1, x2, y2\)"),
    (lambda: pairwise_iou(jnp.zeros(4), jnp.zeros((2, 4))), r"a of shape \(4,\)"),
    (lambda: pairwise_iou(jnp.zeros((2, 4)), jnp.ones((2, 3))), r"b of shape \(2, 3\)"),  # 0
    (lambda: area(jnp.zeros((1, 5))), r"boxes of shape \(1, 5\): expected \(\.\.\., 4\)"),
    (lambda: decode(jnp.zeros((1, 4)), jnp.ones((1, 4)), (1.0, 1.0)),
     r"weights \(1.0, 1.0\): expected 4 coding weights \(wx, wy, ww, wh\)"),
    (lambda: encode(jnp.ones((1, 4)), jnp.ones((1, 5))), r"reference of shape \(1, 5\)"),
])
def test_bad_box_shapes_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
