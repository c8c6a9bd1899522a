"""Shapes in clutter for detection: a synthetic COCO-style set generated from a seed.

Each 128x128 grey image holds 3-8 objects, the shapes of `small_objects` (one of `CLASSES`,
rotated up to 20 degrees, brighter or darker than their surroundings), drawn 8 to 64
pixels across (log-uniform, so that about two thirds are COCO "small", box area < 32^2, and
the rest "medium", 32^2 to 96^2), never overlapping one another, on a textured background
(smooth noise, stripes, pixel noise) with clutter: halves of the same shapes, cut by a
random line, at random places and sizes. Example `i` of a split is a pure function of
`(seed, split, i)` (`example`); nothing is stored or downloaded.

Boxes are `(x1, y1, x2, y2)` in pixels, end exclusive (pixel `i` spans `[i, i + 1)`),
around the pixels the object covers at least half; labels are COCO category ids
`1..len(CLASSES)`. `coco_ground_truth(split)` gives a split's annotations in COCO format
(`area` is the box's area: the images have no masks). This is a detection set, not a
classification one: it does not follow `lip_jax.data`'s `input_pipeline` interface and
is listed in `lip_jax.data.DETECTION_DATASETS`.
"""

import functools

import numpy as np

from lip_jax.data.small_objects import CLASSES, _draw, _paste

IMAGE_SIZE = 128
SPLITS = {"train": (0, 8_000), "val": (1, 500)}  # split -> (stream id, images)
OBJECTS = (3, 9)  # objects per image, [low, high)
MAX_OBJECTS = OBJECTS[1] - 1  # rows of the padded arrays `load` returns
OBJECT_SIZE = (8, 64)  # pixels across, log-uniform
MAX_ANGLE = 20.0  # degrees
CONTRAST = (0.25, 0.5)  # object intensity minus local background, in [0, 1] units
DISTRACTORS = (4, 10)  # clutter fragments per image, [low, high)
PLACEMENT_TRIES = 50  # an object that finds no free place in this many draws is dropped
MEAN, STD = (127.5,), (50.6,)  # pixel statistics of the images (measured on 300)

__all__ = ["CLASSES", "IMAGE_SIZE", "MAX_OBJECTS", "MEAN", "SPLITS", "STD",
           "coco_ground_truth", "example", "load"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A `(size, size)` texture in about [0.1, 0.9]: a few smooth waves, one stripe
    pattern, pixel noise."""
    y, x = np.mgrid[:size, :size] / size
    smooth = sum(np.cos(2 * np.pi * (fy * y + fx * x) + phase)
                 for fy, fx, phase in zip(*rng.uniform(-2, 2, (2, 4)),
                                          rng.uniform(0, 2 * np.pi, 4))) / 4
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 9.0) / size
    stripes = np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period
                     + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.2 * smooth + rng.uniform(0.03, 0.1) * stripes
            + 0.05 * rng.standard_normal((size, size)))


def _log_uniform_size(rng: np.random.Generator) -> int:
    low, high = np.log(OBJECT_SIZE[0]), np.log(OBJECT_SIZE[1] + 1)
    return min(int(np.exp(rng.uniform(low, high))), OBJECT_SIZE[1])


def example(index: int, split: str = "train", seed: int = 0) -> dict:
    """Image `index` of `split`: `{"image": (128, 128, 1) uint8, "boxes": (M, 4) float32
    (x1, y1, x2, y2), "labels": (M,) int32 in 1..len(CLASSES)}`, a pure function of its
    arguments (M objects, 3 <= M <= 8 but for an object that found no free place)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    stream, count = SPLITS[split]
    if not 0 <= index < count:
        raise IndexError(f"index {index} out of range for the {count} {split} images")
    rng = np.random.default_rng((seed, stream, index))
    image = _background(rng, IMAGE_SIZE)
    for _ in range(rng.integers(*DISTRACTORS)):
        kind = CLASSES[rng.integers(len(CLASSES))]
        s = _log_uniform_size(rng)
        patch = _draw(kind, s, rng.uniform(-MAX_ANGLE, MAX_ANGLE), rng.uniform(0, 2 * np.pi))
        y, x = rng.integers(0, IMAGE_SIZE - s + 1, 2)
        _paste(image, patch, y, x, rng, rng.uniform(*CONTRAST))
    taken = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)  # object pixels and a 2-pixel margin
    boxes, labels = [], []
    for _ in range(rng.integers(*OBJECTS)):
        label = int(rng.integers(len(CLASSES)))
        s = _log_uniform_size(rng)
        patch = _draw(CLASSES[label], s, rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        for _ in range(PLACEMENT_TRIES):
            y, x = (int(t) for t in rng.integers(0, IMAGE_SIZE - s + 1, 2))
            if not taken[max(y - 2, 0):y + s + 2, max(x - 2, 0):x + s + 2].any():
                break
        else:
            continue
        taken[max(y - 2, 0):y + s + 2, max(x - 2, 0):x + s + 2] = True
        _paste(image, patch, y, x, rng, rng.uniform(*CONTRAST))
        rows, cols = np.nonzero(patch >= 0.5)
        boxes.append([x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1])
        labels.append(label + 1)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return {"image": pixels[..., None], "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int32)}


def load(split: str, seed: int = 0, count: int | None = None) -> dict:
    """The first `count` images of `split` (default all) stacked: `{"image": (N, 128, 128,
    1) uint8, "boxes": (N, MAX_OBJECTS, 4) float32, "labels": (N, MAX_OBJECTS) int32}`, rows
    past an image's objects padded with zero boxes and label 0. Cached: treat the arrays as
    read-only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    size = SPLITS[split][1]
    if count is not None and not 0 < count <= size:
        raise ValueError(f"count {count}: the {split} split has 1..{size} images")
    return _load(split, seed, size if count is None else count)


@functools.lru_cache(maxsize=4)
def _load(split: str, seed: int, count: int) -> dict:
    examples = [example(i, split, seed) for i in range(count)]
    boxes = np.zeros((count, MAX_OBJECTS, 4), np.float32)
    labels = np.zeros((count, MAX_OBJECTS), np.int32)
    for i, e in enumerate(examples):
        boxes[i, :len(e["labels"])] = e["boxes"]
        labels[i, :len(e["labels"])] = e["labels"]
    return {"image": np.stack([e["image"] for e in examples]), "boxes": boxes,
            "labels": labels}


def coco_ground_truth(split: str = "val", seed: int = 0, count: int | None = None) -> dict:
    """The annotations of `load(split, seed, count)` as a COCO dataset dict (`images`,
    `annotations`, `categories`); image ids are the indices, `bbox` is `[x, y, width,
    height]`, `area` the box's area."""
    data = load(split, seed, count)
    images, annotations = [], []
    for i, (boxes, labels) in enumerate(zip(data["boxes"], data["labels"])):
        images.append({"id": i, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                       "file_name": f"{split}/{i}.png"})
        for (x1, y1, x2, y2), label in zip(boxes[labels > 0], labels[labels > 0]):
            w, h = float(x2 - x1), float(y2 - y1)
            bbox = [float(x1), float(y1), w, h]
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(label), "bbox": bbox, "area": w * h,
                                "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    return {"info": {"description": f"detection_shapes {split}, seed {seed}"},
            "images": images, "annotations": annotations, "categories": categories}
