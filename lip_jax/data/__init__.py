"""Datasets by name: what the training loop reads.

`DATASETS` holds each dataset's facts; `input_pipeline(config)` returns the object the loop
iterates (`InputPipeline`): any format, one interface, implemented by `GrainInput` over
random-access sources (in-memory arrays, TFDS array_record) and by
`imagenet_tf.TfRecordInput` over TFDS tfrecord (tf.data). `prefetch_to_device` overlaps
the host-to-device copy of the next batch with the current step.
"""

from collections.abc import Iterator
from typing import Protocol

from lip_jax.data import fashion_mnist, imagenet, pipeline, small_objects
from lip_jax.data.pipeline import DatasetInfo, GrainInput, prefetch_to_device

DATASETS = {"fashion_mnist": fashion_mnist.INFO, "imagenet2012": imagenet.INFO,
            "small_objects": small_objects.INFO}


class InputPipeline(Protocol):
    """One dataset's training and evaluation input for this process."""

    num_train: int  # examples in the training split (an epoch)

    def train_batches(self, start_step: int, process_index: int,
                      process_count: int) -> Iterator[dict]:
        """This process's rows of global batches `start_step, start_step + 1, ...`:
        `{"image": uint8 (B/P, H, W, C), "label": int (B/P,)}`, forever."""

    def eval_batches(self, global_batch: int, process_index: int,
                     process_count: int) -> Iterator[dict]:
        """One pass over the evaluation split in padded global batches, with `mask`
        (0 on padding): every example counted once for any batch and process count."""


def info(dataset: str) -> DatasetInfo:
    return DATASETS[dataset]


def image_shape(config) -> tuple[int, int, int]:
    if config.dataset == "fashion_mnist":
        return (28, 28, 1)
    if config.dataset == "small_objects":
        return (small_objects.IMAGE_SIZE, small_objects.IMAGE_SIZE, 1)
    return (config.image_size, config.image_size, 3)


def input_pipeline(config) -> InputPipeline:
    """The input of `config.dataset` (read from `config.data_dir`, nothing downloaded)."""
    if config.dataset == "fashion_mnist":
        return GrainInput(fashion_mnist.load("train", config.data_dir),
                          fashion_mnist.train_transform,
                          fashion_mnist.load("test", config.data_dir),
                          fashion_mnist.eval_transform,
                          batch_size=config.batch_size, seed=config.seed,
                          num_threads=config.num_threads, num_workers=config.num_workers)
    if config.dataset == "small_objects":
        return GrainInput(small_objects.load("train"), small_objects.train_transform,
                          small_objects.load("test"), small_objects.eval_transform,
                          batch_size=config.batch_size, seed=config.seed,
                          num_threads=config.num_threads, num_workers=config.num_workers)
    return imagenet.input_pipeline(config)


__all__ = ["DATASETS", "DatasetInfo", "InputPipeline", "image_shape", "info", "input_pipeline",
           "pipeline", "prefetch_to_device"]
