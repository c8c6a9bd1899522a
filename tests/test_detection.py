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
from lip_jax.detection.anchors import pyramid_anchors
from lip_jax.detection.boxes import decode, encode, pairwise_iou
from lip_jax.detection.model import FasterRCNN
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
    (dict(aspect_ratios=()), {}, "must be positive, with as many sizes"),
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
