"""Small objects in clutter: a synthetic classification set generated on the fly.

Each 64x64 grey image holds one object, a drawn shape 6-12 pixels across (one of
`CLASSES`, rotated up to 20 degrees, brighter or darker than its surroundings), at a random
position on a textured background (smooth noise, stripes, pixel noise) with distractor
fragments: halves of the same shapes, cut by a random line, at random places. Example `i`
of a split is a pure function of `(seed, split, i)` (`example`); `load` draws a whole
split in memory once per process (about 1 ms an image). Nothing is stored or downloaded.

The label is the object's shape; `box` is its bounding box `(y0, x0, y1, x1)` in pixels
(end exclusive), for measuring where a model looks. The difficulty (object size, contrast,
clutter) is set so that a small strided-convolution ResNet trained for minutes stays well
below 100% (see experiments/README.md for the measured accuracies).
"""

import functools

import numpy as np

from lip_jax.data.fashion_mnist import eval_transform, train_transform
from lip_jax.data.pipeline import DatasetInfo, GrainInput, digest

IMAGE_SIZE = 64
CLASSES = ("disk", "square", "triangle", "plus", "ring", "bars")
SPLITS = {"train": (0, 20_000), "test": (1, 4_000)}  # split -> (stream id, examples)
OBJECT_SIZE = (6, 12)  # pixels across, inclusive
MAX_ANGLE = 20.0  # degrees
CONTRAST = (0.25, 0.5)  # object intensity minus local background, in [0, 1] units
DISTRACTORS = (3, 7)  # fragments per image, [low, high)
SUPERSAMPLE = 4  # sub-pixels per pixel side when drawing (anti-aliasing)
INFO = DatasetInfo(num_classes=len(CLASSES), num_train=SPLITS["train"][1],
                   num_eval=SPLITS["test"][1], mean=(127.4,), std=(28.8,))
CONFIG_FIELDS = ()  # the dataset-specific config fields it reads

__all__ = ["CLASSES", "CONFIG_FIELDS", "INFO", "eval_transform", "example", "image_shape",
           "input_pipeline", "load", "train_transform"]


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points `(u, v)` in [-1, 1]^2 (v downwards) lie inside shape `kind`."""
    r = np.hypot(u, v)
    if kind == "disk":
        return r <= 1.0
    if kind == "square":
        return np.maximum(abs(u), abs(v)) <= 0.85
    if kind == "triangle":  # apex up, base at v = 0.8
        return (v <= 0.8) & (2.0 * abs(u) <= v + 1.0)
    if kind == "plus":
        return (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 1.0)
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if kind == "bars":  # two horizontal bars
        return (abs(u) <= 0.95) & (abs(abs(v) - 0.6) <= 0.25)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(CLASSES)}")


def _draw(kind: str, size: int, angle: float, cut: float | None = None) -> np.ndarray:
    """Coverage in [0, 1] of shape `kind`, `size` pixels across, rotated by `angle`
    degrees, as a `(size, size)` patch; `cut` (an angle in radians) keeps only the half on
    one side of a line through the centre (a distractor fragment)."""
    n = size * SUPERSAMPLE
    grid = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    v, u = np.meshgrid(grid, grid, indexing="ij")
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    inside = _inside(kind, c * u + s * v, -s * u + c * v)
    if cut is not None:
        inside &= np.cos(cut) * u + np.sin(cut) * v >= 0
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A `(64, 64)` texture in about [0.15, 0.85]: smooth noise, stripes, pixel noise."""
    size = IMAGE_SIZE
    coarse = rng.random((9, 9))
    ticks = np.linspace(0, 8, size)
    i, f = np.minimum(ticks.astype(int), 7), ticks - np.minimum(ticks.astype(int), 7)
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]  # bilinear upsampling
    smooth = rows[:, i] * (1 - f) + rows[:, i + 1] * f
    y, x = np.mgrid[:size, :size]
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 9.0)
    stripes = np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period
                     + rng.uniform(0, 2 * np.pi))
    texture = (0.5 + 0.3 * (smooth - 0.5) + rng.uniform(0.03, 0.1) * stripes
               + 0.05 * rng.standard_normal((size, size)))
    return texture


def _paste(image: np.ndarray, patch: np.ndarray, y: int, x: int, rng, contrast) -> None:
    """Blends a shape of coverage `patch` at `(y, x)`, `contrast` above or below the local
    background mean (sign at random), in place."""
    h, w = patch.shape
    region = image[y:y + h, x:x + w]
    level = region.mean() + rng.choice((-1.0, 1.0)) * contrast
    region += patch * (level - region)


def example(index: int, split: str = "train", seed: int = 0) -> dict:
    """Example `index` of `split`: `{"image": (64, 64, 1) uint8, "label": int,
    "box": (4,) int64 (y0, x0, y1, x1)}`, a pure function of its arguments."""
    stream, size = SPLITS[split]
    if not 0 <= index < size:
        raise IndexError(f"index {index} out of range for the {size} {split} examples")
    rng = np.random.default_rng((seed, stream, index))
    image = _background(rng)
    for _ in range(rng.integers(*DISTRACTORS)):
        kind = CLASSES[rng.integers(len(CLASSES))]
        s = int(rng.integers(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
        patch = _draw(kind, s, rng.uniform(-MAX_ANGLE, MAX_ANGLE), rng.uniform(0, 2 * np.pi))
        y, x = rng.integers(0, IMAGE_SIZE - s + 1, 2)
        _paste(image, patch, y, x, rng, rng.uniform(*CONTRAST))
    label = int(rng.integers(len(CLASSES)))
    s = int(rng.integers(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
    patch = _draw(CLASSES[label], s, rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    y, x = (int(t) for t in rng.integers(0, IMAGE_SIZE - s + 1, 2))
    _paste(image, patch, y, x, rng, rng.uniform(*CONTRAST))
    rows, cols = np.nonzero(patch >= 0.5)
    box = np.array([y + rows.min(), x + cols.min(), y + rows.max() + 1, x + cols.max() + 1])
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return {"image": pixels[..., None], "label": label, "box": box}


@functools.lru_cache(maxsize=4)
def load(split: str, seed: int = 0) -> tuple[dict, ...]:
    """Every `example` of `split` ("train" or "test"); the same images for any training
    seed (`seed` picks another draw of the dataset)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return tuple(example(i, split, seed) for i in range(SPLITS[split][1]))


def image_shape(config) -> tuple[int, int, int]:
    return (IMAGE_SIZE, IMAGE_SIZE, 1)


def input_pipeline(config) -> GrainInput:
    """Both splits, generated in memory (seed 0: the same images for any training seed)."""
    train, test = load("train"), load("test")
    return GrainInput.from_config(config, train, train_transform, test, eval_transform,
                                  fingerprint=digest(train, test))
