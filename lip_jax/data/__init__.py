"""Datasets by name: what the training loop reads."""

from lip_jax.data import fashion_mnist, imagenet, pipeline
from lip_jax.data.pipeline import DatasetInfo

_INFO = {"fashion_mnist": fashion_mnist.INFO, "imagenet2012": imagenet.INFO}


def info(dataset: str) -> DatasetInfo:
    return _INFO[dataset]


def image_shape(config) -> tuple[int, int, int]:
    if config.dataset == "fashion_mnist":
        return (28, 28, 1)
    return (config.image_size, config.image_size, 3)


def train_split(config):
    """(random-access source, transform(example, rng)) of the training split."""
    if config.dataset == "fashion_mnist":
        return fashion_mnist.load("train", config.data_dir), fashion_mnist.train_transform
    return (imagenet.source("train", config.data_dir, config.data_format),
            imagenet.train_transform(config.image_size))


def eval_split(config):
    """(random-access source, transform(example)) of the evaluation split."""
    if config.dataset == "fashion_mnist":
        return fashion_mnist.load("test", config.data_dir), fashion_mnist.eval_transform
    return (imagenet.source("eval", config.data_dir, config.data_format),
            imagenet.eval_transform(config.image_size))


__all__ = ["DatasetInfo", "eval_split", "image_shape", "info", "pipeline", "train_split"]
