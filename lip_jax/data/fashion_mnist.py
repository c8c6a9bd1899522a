"""Fashion-MNIST from local files: Debian's `dataset-fashion-mnist`, a folder of the
standard IDX files, or a prepared TFDS `fashion_mnist`. Nothing is downloaded."""

import gzip
import zlib
from pathlib import Path

import numpy as np

from lip_jax.data.pipeline import DatasetInfo, GrainInput, check_labels, digest

DEBIAN_PATH = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
INFO = DatasetInfo(num_classes=10, num_train=60_000, num_eval=10_000, mean=(72.94,),
                   std=(90.02,))
CONFIG_FIELDS = ("data_dir",)  # the dataset-specific config fields it reads


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path} is truncated or damaged: {error}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if ndim not in (1, 3) or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"{path} is truncated or damaged: its header promises "
                         f"{'x'.join(map(str, shape))} bytes, it holds "
                         f"{len(data) - 4 - 4 * ndim}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def load(split: str, data_dir: str = "") -> list[dict]:
    """`split` "train" or "test" as a list of `{"image": (28, 28, 1) uint8, "label": int}`."""
    folder = Path(data_dir) if data_dir else DEBIAN_PATH
    images_name, labels_name = FILES[split]
    images, labels = _find(folder, images_name), _find(folder, labels_name)
    if images and labels:
        x, y = _read_idx(images)[..., None], _read_idx(labels).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{images} holds {len(x)} images but {labels} holds {len(y)} "
                             "labels")
        if x.shape[1:] != (28, 28, 1):
            raise ValueError(f"{images} holds images of {x.shape[1]}x{x.shape[2]} pixels, "
                             "not Fashion-MNIST's 28x28")
        check_labels(y, INFO.num_classes, labels)
        return [{"image": image, "label": label} for image, label in zip(x, y)]
    if data_dir and (folder / "fashion_mnist").is_dir():
        import tensorflow_datasets as tfds  # a prepared TFDS copy: read it, never download
        source = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir,
                                  download=False)
        return [{"image": e["image"], "label": int(e["label"])} for e in source]
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no {images_name}[.gz] in {folder}"
        + ("" if data_dir else " (the default)")
        + ". Install it with `apt-get install dataset-fashion-mnist`, or set "
        "--config.data_dir to a folder with the IDX files or to a TFDS data_dir where "
        "fashion_mnist is prepared. Nothing is downloaded.")


def image_shape(config) -> tuple[int, int, int]:
    return (28, 28, 1)


def input_pipeline(config) -> GrainInput:
    """The splits of `config.data_dir` (default: Debian's copy), in memory."""
    train, test = load("train", config.data_dir), load("test", config.data_dir)
    return GrainInput.from_config(config, train, train_transform, test, eval_transform,
                                  fingerprint=digest(train, test))


def train_transform(example: dict, rng: np.random.Generator) -> dict:
    """A random horizontal flip (the default job is too short to profit from crops)."""
    image = example["image"][:, ::-1] if rng.random() < 0.5 else example["image"]
    return {"image": np.ascontiguousarray(image), "label": example["label"]}


def eval_transform(example: dict) -> dict:
    return {"image": example["image"], "label": example["label"]}
