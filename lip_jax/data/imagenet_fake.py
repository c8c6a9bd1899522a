"""A synthetic `imagenet2012`, prepared by TFDS's own builder from fake ILSVRC2012 tars.

For tests and input benchmarks: the directories are exactly what `tfds build imagenet2012`
makes from the real archives (building needs TensorFlow: TFDS's builder uses tf.io.gfile).
"""

import io
import tarfile
from pathlib import Path

import numpy as np

SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361")  # TFDS labels.txt order


def jpeg(seed: int, width: int, height: int, noise: float = 0.0) -> bytes:
    """A JPEG of smooth random colours, plus Gaussian grain of std `noise` (photo-like
    file sizes: about 80 kB at 500 x 375 with noise 16)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8))
    pixels = np.asarray(colours.resize((width, height), Image.BICUBIC), np.float32)
    pixels = pixels + rng.normal(0, noise, pixels.shape) if noise else pixels
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_manual_dir(folder: Path, num_classes: int = 3, per_class: int = 4, num_val: int = 7,
                     size: tuple[int, int] | None = None, noise: float = 0.0) -> Path:
    """ILSVRC2012_img_train.tar (a tar of JPEGs per synset) and ILSVRC2012_img_val.tar
    (JPEGs that TFDS labels from their sorted names) in `folder`, as ImageNet ships them.
    Images are `size` (width, height), or small and of varied sizes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def image(seed, width, height):
        return jpeg(seed, *(size or (width, height)), noise=noise)

    train = {f"{synset}.tar": _tar({f"{synset}_{i}.JPEG": image(10_000 * c + i, 40 + 3 * i,
                                                                  30 + 5 * c)
                                     for i in range(per_class)})
             for c, synset in enumerate(SYNSETS[:num_classes])}
    (folder / "ILSVRC2012_img_train.tar").write_bytes(_tar(train))
    val = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": image(99_999 - i, 50 - 2 * i, 36 + i)
           for i in range(num_val)}
    (folder / "ILSVRC2012_img_val.tar").write_bytes(_tar(val))
    return folder


def build(data_dir: Path, manual_dir: Path, file_format: str) -> Path:
    """Prepares imagenet2012 in the TFDS `data_dir` from `manual_dir`, in `file_format`."""
    import tensorflow_datasets as tfds
    builder = tfds.builder("imagenet2012", data_dir=str(data_dir), file_format=file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return Path(data_dir)
