"""A tiny Fashion-MNIST-format dataset and a tiny training config, built by the tests."""

import gzip
from pathlib import Path

import numpy as np

from lip_jax.train.config import load_config


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\0\0\x08" + bytes([array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(folder: Path, num_train=256, num_test=103, seed=0) -> Path:
    """Learnable fake data: the label sets the brightness of a class-specific stripe."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 3] = 250
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def tiny_overrides(data_dir, **fields) -> list[str]:
    values = dict(model_kwargs={"widths": (4, 8), "convs_per_stage": (1, 1)},
                  data_dir=str(data_dir), batch_size=32, eval_batch_size=40, num_epochs=1.0,
                  learning_rate=0.4, log_every_steps=1, num_threads=2,
                  checkpoint_every_secs=1e6)
    values.update(fields)
    return [f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}"
            for k, v in values.items()]


def tiny_config(data_dir, **fields):
    return load_config(None, tiny_overrides(data_dir, **fields))
