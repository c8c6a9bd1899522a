"""ImageNet (TFDS `imagenet2012`) from a TFDS data_dir prepared in either file format.

array_record is read through `tfds.data_source` and grain (no TensorFlow); tfrecord through
tf.data (`imagenet_tf`, the `[tf]` extra). Both evaluate on the same Pillow-decoded images;
training crops are decoded by Pillow (array_record) or fused in TensorFlow (tfrecord).
Nothing is downloaded: a missing or differently-formatted dataset is an error saying how
to prepare or convert it.
"""

import functools
import hashlib
import io
import math
import re

import numpy as np
from etils import epath

from lip_jax.data.pipeline import DatasetInfo, GrainInput

INFO = DatasetInfo(num_classes=1000, num_train=1_281_167, num_eval=50_000,
                   mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
CONFIG_FIELDS = ("data_dir", "data_format", "image_size")  # the dataset-specific fields read
NAME = "imagenet2012"
SPLITS = {"train": "train", "eval": "validation"}
FORMATS = ("array_record", "tfrecord")


def prepared_dir(data_dir: str, data_format: str) -> epath.Path:
    """The newest version directory of imagenet2012 in the TFDS `data_dir` that holds
    `data_format` shards; otherwise FileNotFoundError naming what was found and the fix."""
    if not data_dir:
        raise FileNotFoundError(f"{NAME} needs --config.data_dir, the TFDS data_dir where it "
                                "is prepared; nothing is downloaded")
    root = epath.Path(data_dir)
    versions = sorted((p for p in (root / NAME).glob("*")
                       if re.fullmatch(r"\d+\.\d+\.\d+", p.name)
                       and (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(map(int, p.name.split("."))))
    if not versions:
        found = (", ".join(sorted(p.name for p in root.iterdir())) or "an empty directory"
                 if root.is_dir() else "no such directory")
        raise FileNotFoundError(
            f"no prepared {NAME} in --config.data_dir={data_dir} (found: {found}). Prepare "
            f"it with `tfds build {NAME} --data_dir={data_dir} --manual_dir=DIR "
            f"--file_format={data_format}`, DIR holding ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar")
    version = versions[-1]
    found = [f for f in FORMATS if any(version.glob(f"{NAME}-train.{f}-*"))]
    if data_format not in found:
        switch = (f"set --config.data_format={found[0]}, or " if found else "")
        raise FileNotFoundError(
            f"{version} holds {NAME} as {' and '.join(found) or 'no training shards'}, not "
            f"{data_format}: {switch}convert it with `tfds convert_format "
            f"--dataset_version_dir={version} --out_file_format={data_format}` "
            "(TFDS needs apache-beam importable for that command)")
    return version


def image_shape(config) -> tuple[int, int, int]:
    return (config.image_size, config.image_size, 3)


def input_pipeline(config):
    """The `InputPipeline` of imagenet2012 in `config.data_dir`, `config.data_format`."""
    version = prepared_dir(config.data_dir, config.data_format)
    if config.data_format == "tfrecord":
        from lip_jax.data import imagenet_tf
        return imagenet_tf.TfRecordInput(version, config.image_size, config.batch_size,
                                         config.seed, config.num_threads)
    import tensorflow_datasets as tfds
    reader = builder(version, config.data_format)
    sources = [reader.as_data_source(SPLITS[split],
                                     decoders={"image": tfds.decode.SkipDecoding()})
               for split in ("train", "eval")]
    return GrainInput.from_config(config, sources[0], train_transform(config.image_size),
                                  sources[1], eval_transform(config.image_size),
                                  fingerprint=fingerprint(version, config.data_format),
                                  damaged_files=functools.partial(damaged_files, version,
                                                                  reader, config.data_format))


def builder(version_dir: epath.Path, data_format: str):
    """TFDS's reader of `version_dir` in `data_format` (a directory may hold both formats,
    its dataset_info.json naming one); checks the class count and that every shard exists."""
    import tensorflow_datasets as tfds
    reader = tfds.builder_from_directory(str(version_dir))
    reader.info.set_file_format(data_format, override=True, override_if_initialized=True)
    classes = reader.info.features["label"].num_classes
    if classes != INFO.num_classes:
        raise ValueError(f"{version_dir} has {classes} classes, not {NAME}'s "
                         f"{INFO.num_classes}")
    present = {path.name for path in version_dir.iterdir()}  # one listing, not a stat a shard
    missing = [name for split in SPLITS.values() for name in reader.info.splits[split].filenames
               if name not in present]
    if missing:
        raise FileNotFoundError(f"{version_dir} lacks {len(missing)} of the {data_format} "
                                f"shards its dataset_info.json lists, e.g. {missing[0]}")
    return reader


def _shards(version_dir, reader):
    """(path, records) of every shard of both splits."""
    for split in SPLITS.values():
        info = reader.info.splits[split]
        yield from ((version_dir / name, n) for name, n in zip(info.filenames,
                                                               info.shard_lengths))


def fingerprint(version_dir: epath.Path, data_format: str) -> str:
    """A short hash of the format and dataset_info.json (the splits' shards, their record
    counts and bytes): one file read, however many shards."""
    info = (version_dir / "dataset_info.json").read_bytes()
    return hashlib.sha256(data_format.encode() + info).hexdigest()[:16]


def damaged_files(version_dir: epath.Path, reader, data_format: str) -> list[str]:
    """The shards whose record count differs from dataset_info.json's (truncated files),
    each with what was found."""
    found = []
    for path, expected in _shards(version_dir, reader):
        try:
            count, cut = (_array_records(path) if data_format == "array_record"
                          else _tfrecords(path))
            seen = f"{count} records" + (" and a truncated one" if cut else "")
        except Exception as error:  # unreadable
            count, cut, seen = None, True, f"unreadable records ({error})"
        if cut or count != expected:
            found.append(f"{path} holds {seen}, dataset_info.json says {expected}")
    return found


def _array_records(path: epath.Path) -> tuple[int, bool]:
    from array_record.python import array_record_module
    return array_record_module.ArrayRecordReader(str(path)).num_records(), False


def _tfrecords(path: epath.Path) -> tuple[int, bool]:
    """(whole records, whether a truncated one follows) of a TFRecord file, counted from
    their length headers (payloads are skipped)."""
    size, count = path.stat().length, 0
    with path.open("rb") as f:
        while header := f.read(12):  # uint64 length, uint32 CRC of the length
            end = f.tell() + int.from_bytes(header[:8], "little") + 4  # payload and its CRC
            if len(header) < 12 or end > size:
                return count, True
            f.seek(end)
            count += 1
    return count, False


def inception_crop(width: int, height: int, rng: np.random.Generator,
                   scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, width, height)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height  # fall back to a central crop within the ratio bounds
    w, h = ((width, int(round(width / ratio[0]))) if aspect < ratio[0] else
            (int(round(height * ratio[1])), height) if aspect > ratio[1] else (width, height))
    return (width - w) // 2, (height - h) // 2, w, h


def resized_crop(image, box: tuple[int, int, int, int], size: int):
    """The `box` (left, top, width, height) of a just-opened (not yet decoded) Pillow image,
    resized to (size, size) as an RGB Pillow image.

    A JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale (Pillow `draft`, done in the
    DCT) at which the box still spans at least `size` pixels each way, so the resize never
    upsamples more than it would from the full image.
    """
    from PIL import Image
    full_width, full_height = image.size
    left, top, w, h = box
    image.draft("RGB", (math.ceil(full_width * size / w), math.ceil(full_height * size / h)))
    sx, sy = image.size[0] / full_width, image.size[1] / full_height
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image.resize((size, size), Image.BILINEAR,
                        box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def train_transform(size: int):
    """Inception crop (scale 0.08-1, ratio 3/4-4/3) to (size, size) and a random flip."""
    def transform(example, rng):
        from PIL import Image
        image = Image.open(io.BytesIO(example["image"]))
        image = resized_crop(image, inception_crop(*image.size, rng), size)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"image": np.asarray(image), "label": int(example["label"])}
    return transform


def eval_image(data: bytes, size: int) -> np.ndarray:
    """Shorter side resized to size * 8 / 7 (256 for 224), then the central (size, size)."""
    from PIL import Image
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = size * 8 // 7 / min(image.size)
    w, h = max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def eval_transform(size: int):
    def transform(example):
        return {"image": eval_image(example["image"], size), "label": int(example["label"])}
    return transform
