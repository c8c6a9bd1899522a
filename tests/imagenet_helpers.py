"""A tiny `imagenet2012` prepared by TFDS's own builder from fake ILSVRC2012 tars."""

import io
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ("n01440764", "n01443537", "n01484850")  # the first synsets of TFDS's labels.txt


def jpeg(seed: int, width: int, height: int) -> bytes:
    """A JPEG of smooth random colours (compresses like a photo, not like noise)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_manual_dir(folder: Path, per_class: int = 4, num_val: int = 7) -> Path:
    """ILSVRC2012_img_train.tar (one tar of JPEGs per synset) and ILSVRC2012_img_val.tar
    (JPEGs labelled by TFDS from their sorted names), laid out as ImageNet ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    train = {f"{synset}.tar": _tar({f"{synset}_{i}.JPEG": jpeg(10 * c + i, 40 + 3 * i, 30 + 5 * c)
                                     for i in range(per_class)})
             for c, synset in enumerate(CLASSES)}
    (folder / "ILSVRC2012_img_train.tar").write_bytes(_tar(train))
    val = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg(1000 + i, 50 - 2 * i, 36 + i)
           for i in range(num_val)}
    (folder / "ILSVRC2012_img_val.tar").write_bytes(_tar(val))
    return folder


def build_imagenet(data_dir: Path, manual_dir: Path, file_format: str) -> Path:
    """Prepares imagenet2012 in `data_dir` with TFDS's builder, in `file_format`."""
    import tensorflow_datasets as tfds
    builder = tfds.builder("imagenet2012", data_dir=str(data_dir), file_format=file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return data_dir


# Runs a script with TensorFlow hidden from imports, as on a machine without the [tf] extra.
WITHOUT_TENSORFLOW = """
import sys

class HideTensorflow:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "tensorflow":
            return self.finder.find_spec(name, path, target)

sys.meta_path[:] = [HideTensorflow(finder) for finder in sys.meta_path]
"""
