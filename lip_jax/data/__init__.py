"""Datasets by name: what the training loop reads.

`DATASETS` maps each name to its module, which holds every fact of that dataset: `INFO`
(a `DatasetInfo`), `CONFIG_FIELDS` (the dataset-specific config fields it reads, of
`DATASET_FIELDS`), `image_shape(config)` and `input_pipeline(config)`. Adding a dataset is
one module and one entry here. `input_pipeline(config)` returns the object the loop
iterates (`InputPipeline`): any format, one interface, implemented by `GrainInput` over
random-access sources (in-memory arrays, TFDS array_record) and by
`imagenet_tf.TfRecordInput` over TFDS tfrecord (tf.data). `prefetch_to_device` overlaps
the host-to-device copy of the next batch with the current step.
"""

from collections.abc import Iterator
from typing import Protocol

from lip_jax.data import detection_shapes, fashion_mnist, imagenet, pipeline, small_objects
from lip_jax.data.pipeline import DatasetInfo, GrainInput, prefetch_to_device

DATASETS = {"fashion_mnist": fashion_mnist, "imagenet2012": imagenet,
            "small_objects": small_objects}
DETECTION_DATASETS = {"detection_shapes": detection_shapes}  # not for input_pipeline
DATASET_FIELDS = ("data_dir", "data_format", "image_size")  # read by some datasets only


class InputPipeline(Protocol):
    """One dataset's training and evaluation input for this process."""

    num_train: int  # examples in the training split (an epoch)
    num_eval: int  # examples in the evaluation split
    fingerprint: str  # a short hash of what this process read: equal where the data is

    def damaged_files(self) -> list[str]:
        """The dataset's files found truncated or damaged, each with what is wrong (called
        after reading failed, to name the file)."""

    def train_batches(self, start_step: int, process_index: int,
                      process_count: int) -> Iterator[dict]:
        """This process's rows of global batches `start_step, start_step + 1, ...`:
        `{"image": uint8 (B/P, H, W, C), "label": int (B/P,)}`, forever."""

    def eval_batches(self, global_batch: int, process_index: int,
                     process_count: int) -> Iterator[dict]:
        """One pass over the evaluation split in padded global batches, with `mask`
        (0 on padding): every example counted once for any batch and process count."""


def info(dataset: str) -> DatasetInfo:
    return DATASETS[dataset].INFO


def image_shape(config) -> tuple[int, int, int]:
    """`(H, W, C)` of the images `config.dataset` feeds the model."""
    return DATASETS[config.dataset].image_shape(config)


def input_pipeline(config) -> InputPipeline:
    """The input of `config.dataset` (read from `config.data_dir`, nothing downloaded)."""
    return DATASETS[config.dataset].input_pipeline(config)


__all__ = ["DATASETS", "DATASET_FIELDS", "DETECTION_DATASETS", "DatasetInfo", "GrainInput",
           "InputPipeline", "image_shape", "info", "input_pipeline", "pipeline",
           "prefetch_to_device"]
