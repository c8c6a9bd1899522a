"""The small-objects dataset: deterministic, boxed objects, usable by the training loop."""

import numpy as np
import pytest

from lip_jax import data
from lip_jax.data import small_objects
from lip_jax.train import loop
from lip_jax.train.config import load_config


def test_examples_are_a_pure_function_of_seed_split_and_index():
    a, b = small_objects.example(7), small_objects.example(7)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["label"] == b["label"] and list(a["box"]) == list(b["box"])
    others = [small_objects.example(7, "test"), small_objects.example(7, seed=1),
              small_objects.example(8)]
    assert all(not np.array_equal(a["image"], o["image"]) for o in others)
    with pytest.raises(IndexError, match="out of range"):
        small_objects.example(small_objects.INFO.num_eval, "test")


def test_object_is_small_inside_its_box_and_labels_cover_every_class():
    examples = [small_objects.example(i) for i in range(120)]
    low, high = small_objects.OBJECT_SIZE
    for e in examples:
        assert e["image"].shape == (64, 64, 1) and e["image"].dtype == np.uint8
        y0, x0, y1, x1 = e["box"]
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
        assert max(y1 - y0, x1 - x0) <= high and max(y1 - y0, x1 - x0) >= low // 2
    assert set(e["label"] for e in examples) == set(range(len(small_objects.CLASSES)))


def test_only_pixels_at_the_box_belong_to_the_object(monkeypatch):
    """Redrawing an example with its object (the last shape pasted) at zero coverage
    changes pixels only inside its box, or one pixel around it (anti-aliased edges)."""
    paste, shapes = small_objects._paste, []

    def recording(image, patch, *rest):
        shapes.append(patch.shape)
        paste(image, patch, *rest)

    monkeypatch.setattr(small_objects, "_paste", recording)
    e = small_objects.example(3)
    count = len(shapes)
    shapes.clear()

    def without_object(image, patch, *rest):
        shapes.append(patch.shape)
        paste(image, patch if len(shapes) < count else np.zeros_like(patch), *rest)

    monkeypatch.setattr(small_objects, "_paste", without_object)
    changed = np.argwhere(small_objects.example(3)["image"][..., 0] != e["image"][..., 0])
    y0, x0, y1, x1 = e["box"]
    assert len(changed) >= (y1 - y0) * (x1 - x0) // 4
    assert (changed[:, 0] >= y0 - 1).all() and (changed[:, 0] <= y1).all()
    assert (changed[:, 1] >= x0 - 1).all() and (changed[:, 1] <= x1).all()


def test_lip_jax_trains_and_evaluates_on_small_objects(monkeypatch, tmp_path):
    monkeypatch.setitem(small_objects.SPLITS, "train", (0, 64))
    monkeypatch.setitem(small_objects.SPLITS, "test", (1, 24))
    small_objects.load.cache_clear()
    try:
        config = load_config(None, [
            "--config.dataset=small_objects", "--config.model=resnet18",
            "--config.model_kwargs={'width': 4, 'logit_width': 8, 'stage_sizes': (1, 1)}",
            "--config.batch_size=16", "--config.eval_batch_size=16", "--config.max_steps=2",
            "--config.num_threads=1"])
        assert data.image_shape(config) == (64, 64, 1)
        result = loop.train_and_evaluate(config, tmp_path)
    finally:
        small_objects.load.cache_clear()
    assert result["step"] == 2 and result["eval_count"] == 24
    assert 0 <= result["eval_top1"] <= 1 and np.isfinite(result["eval_loss"])


@pytest.mark.parametrize("dataset", ["fashion_mnist", "small_objects"])
def test_a_dataset_module_feeds_batches_of_its_stated_shape_and_classes(dataset, monkeypatch):
    monkeypatch.setitem(small_objects.SPLITS, "train", (0, 16))
    small_objects.load.cache_clear()
    try:
        config = load_config(None, [f"--config.dataset={dataset}", "--config.batch_size=8",
                                    "--config.num_threads=1"])
        batch = next(data.input_pipeline(config).train_batches(0, 0, 1))
    finally:
        small_objects.load.cache_clear()
    assert batch["image"].shape == (8, *data.image_shape(config))
    assert batch["image"].dtype == np.uint8
    assert ((0 <= batch["label"]) & (batch["label"] < data.info(dataset).num_classes)).all()
