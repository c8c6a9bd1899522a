"""imagenet2012 prepared by TFDS in tfrecord format, read through tf.data (the `[tf]` extra).

Training: process `p` of `P` reads its own `N // P` records (`tfds.even_splits`, remainder
dropped) and makes `N // B` batches of each epoch, as many as the array_record path. Epoch
`e` is ordered by `(seed, e, p)` alone (shuffled files, then a shuffle buffer of 16
batches) and augmented with stateless randomness tied to the record's position in the
epoch, so the stream is reproducible and resuming at step `s` is exact: epoch `s // (N // B)`
is rebuilt and its consumed records are skipped before decoding (read, not decoded). The
Inception crop (the area and ratio ranges of the array_record path; after 10 failed tries
the whole image, where torchvision takes a central crop) is decoded fused
(`tf.image.decode_and_crop_jpeg`) and resized bilinearly without antialiasing, as
big_vision and the Flax ImageNet example do. Evaluation decodes with the Pillow code of
the array_record path (`imagenet.eval_image`): both formats evaluate on identical images.
"""

import dataclasses
import functools
import itertools
from collections.abc import Iterator

import numpy as np
from etils import epath

from lip_jax.data import imagenet
from lip_jax.data.pipeline import local_batch

SHUFFLE_BATCHES = 16  # shuffle buffer, in local batches


def _tensorflow(version_dir):
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"{version_dir} holds {imagenet.NAME} as tfrecord, read through tf.data, and "
            "TensorFlow is not installed: `pip install 'lip-jax[tf]'` (tensorflow-cpu), or "
            "convert the dataset with `tfds convert_format "
            f"--dataset_version_dir={version_dir} --out_file_format=array_record` and set "
            "--config.data_format=array_record") from error
    if tf.config.get_visible_devices("GPU"):  # leave the accelerators to JAX
        tf.config.set_visible_devices([], "GPU")
    return tf


@dataclasses.dataclass
class TfRecordInput:
    """The `InputPipeline` of a tfrecord imagenet2012 in `version_dir` (see module doc)."""

    version_dir: epath.Path
    image_size: int
    batch_size: int
    seed: int
    num_threads: int = 8

    def __post_init__(self):
        import tensorflow_datasets as tfds
        self.tf = _tensorflow(self.version_dir)
        self.tfds = tfds
        self.builder = imagenet.builder(self.version_dir, "tfrecord")
        self.num_train = self.builder.info.splits["train"].num_examples
        self.num_eval = self.builder.info.splits["validation"].num_examples
        self.fingerprint = imagenet.fingerprint(self.version_dir, "tfrecord")

    def damaged_files(self) -> list[str]:
        return imagenet.damaged_files(self.version_dir, self.builder, "tfrecord")

    def _read(self, split, **kwargs):
        """Records of `split` as `{"image": JPEG bytes, "label": int64, ...}`."""
        return self.builder.as_dataset(split, decoders={"image": self.tfds.decode.SkipDecoding()},
                                       **kwargs)

    def _options(self):
        options = self.tf.data.Options()
        options.deterministic = True
        options.threading.private_threadpool_size = self.num_threads
        return options

    def _crop(self, example, seed):
        """Inception crop (area 0.08-1, ratio 3/4-4/3) decoded fused, resized, flipped."""
        tf = self.tf
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(example["image"]), tf.zeros([1, 0, 4]), crop_seed,
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(example["image"], window, channels=3)
        image = tf.image.resize(image, (self.image_size, self.image_size))  # bilinear
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return {"image": image, "label": example["label"]}

    def _epoch(self, epoch, skip, process_index, process_count):
        tf, local = self.tf, self.batch_size // process_count
        seed = int(np.random.SeedSequence([self.seed, epoch, process_index]).generate_state(1)[0])
        share = self.tfds.even_splits("train", process_count, drop_remainder=True)[process_index]
        records = self._read(share, shuffle_files=True,
                             read_config=self.tfds.ReadConfig(shuffle_seed=seed,
                                                              try_autocache=False))
        records = records.shuffle(SHUFFLE_BATCHES * local, seed=seed)
        records = records.take(self.num_train // self.batch_size * local).enumerate().skip(skip)
        epoch_seed = tf.constant(seed, tf.int64)
        images = records.map(lambda i, example: self._crop(example, tf.stack([epoch_seed, i])),
                             num_parallel_calls=tf.data.AUTOTUNE)
        batches = images.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return batches.with_options(self._options()).as_numpy_iterator()

    def train_batches(self, start_step, process_index, process_count) -> Iterator[dict]:
        local = local_batch(self.batch_size, process_count)
        steps_per_epoch = self.num_train // self.batch_size
        if not steps_per_epoch:
            raise ValueError(f"{self.version_dir}: the train split has {self.num_train} "
                             f"examples, fewer than one batch of {self.batch_size}")
        epoch, step = divmod(start_step, steps_per_epoch)
        for e in itertools.count(epoch):
            yield from self._epoch(e, step * local if e == epoch else 0, process_index,
                                   process_count)

    def eval_batches(self, global_batch, process_index, process_count) -> Iterator[dict]:
        """Process `p` decodes records `[p*N//P, (p+1)*N//P)` and pads them to the same
        number of batches as every other process, with `mask` 0 on the padding."""
        tf, size = self.tf, self.image_size
        local = local_batch(global_batch, process_count)
        n = self.num_eval
        start, stop = process_index * n // process_count, (process_index + 1) * n // process_count
        most = -(-n // process_count)  # the largest share
        num_batches = -(-most // local)
        pixels = functools.partial(imagenet.eval_image, size=size)

        def example(record):
            image = tf.numpy_function(pixels, [record["image"]], tf.uint8, stateful=False)
            return {"image": tf.ensure_shape(image, (size, size, 3)),
                    "label": record["label"], "mask": tf.constant(1.0)}

        padding = tf.data.Dataset.from_tensors(
            {"image": tf.zeros((size, size, 3), tf.uint8), "label": tf.constant(0, tf.int64),
             "mask": tf.constant(0.0)}).repeat()
        examples = (self._read(f"validation[{start}:{stop}]", shuffle_files=False)
                    .map(example, num_parallel_calls=self.num_threads)
                    if stop > start else padding.take(0))
        batches = examples.concatenate(padding).take(num_batches * local).batch(local)
        return batches.prefetch(2).with_options(self._options()).as_numpy_iterator()
