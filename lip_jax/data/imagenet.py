"""ImageNet (TFDS `imagenet2012`) read from a prepared TFDS data_dir in array_record format
through `tfds.data_source` (no TensorFlow needed); images are decoded with Pillow."""

import io

import numpy as np

from lip_jax.data.pipeline import DatasetInfo

INFO = DatasetInfo(num_classes=1000, num_train=1_281_167, num_eval=50_000,
                   mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
SPLITS = {"train": "train", "eval": "validation"}


def source(split: str, data_dir: str, data_format: str = "array_record"):
    """Random-access `{"image": JPEG bytes, "label": int}` examples of `split`."""
    import tensorflow_datasets as tfds

    if data_format != "array_record":
        raise NotImplementedError(
            "imagenet2012 in tfrecord format is not supported yet: prepare it as "
            "array_record (`tfds build imagenet2012 --file_format=array_record`)")
    if not data_dir:
        raise FileNotFoundError("imagenet2012 needs --config.data_dir, the TFDS data_dir where "
                                "it is prepared; nothing is downloaded")
    try:
        return tfds.data_source("imagenet2012", split=SPLITS[split], data_dir=data_dir,
                                download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as error:
        raise FileNotFoundError(f"imagenet2012 is not prepared in {data_dir}: {error}") from error


def _decode(data):
    from PIL import Image
    return Image.open(io.BytesIO(data)).convert("RGB")


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


def train_transform(size: int):
    def transform(example, rng):
        from PIL import Image
        image = _decode(example["image"])
        left, top, w, h = inception_crop(*image.size, rng)
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        array = np.asarray(image)
        if rng.random() < 0.5:
            array = array[:, ::-1]
        return {"image": np.ascontiguousarray(array), "label": int(example["label"])}
    return transform


def eval_transform(size: int):
    resize_to = size * 8 // 7  # 256 for 224

    def transform(example):
        from PIL import Image
        image = _decode(example["image"])
        scale = resize_to / min(image.size)
        w, h = max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))
        image = image.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)))
        return {"image": array, "label": int(example["label"])}
    return transform
