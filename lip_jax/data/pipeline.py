"""Deterministic, resumable, per-process input pipelines on grain `MapDataset`s.

A source is any random-access sequence of examples; a transform maps one example (and, in
training, a `numpy.random.Generator`) to `{"image": uint8 HWC, "label": int}`. The order of
global batches depends only on the seed, never on the number of processes, and the
batch of step `s` can be produced directly: resuming at step `s` restores the data
position exactly. Examples are transformed in `num_threads` threads of this process or, with
`num_workers` > 0, in that many worker processes (grain's multiprocessing prefetch, each
with its threads); the batches are the same either way.
"""

import collections
import dataclasses
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import grain
import numpy as np


class DatasetInfo(NamedTuple):
    num_classes: int
    num_train: int
    num_eval: int
    mean: tuple[float, ...]  # per channel, in pixel units (0-255)
    std: tuple[float, ...]


def digest(*sources: Sequence) -> str:
    """A short hash of in-memory examples' images and labels: equal wherever the data is."""
    h = hashlib.sha256()
    for source in sources:
        for example in source:
            h.update(np.ascontiguousarray(example["image"]).tobytes())
            h.update(int(example["label"]).to_bytes(8, "little", signed=True))
    return h.hexdigest()[:16]


def check_labels(labels, num_classes: int, where) -> None:
    """Raises ValueError naming `where` if a label lies outside 0..num_classes-1."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(f"{where} holds labels outside 0..{num_classes - 1} ({len(bad)} of "
                         f"them), e.g. {labels[bad[0]]} at example {bad[0]}")


def local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} is not divisible by the "
                         f"{process_count} processes")
    return global_batch // process_count


def _iterate(batches: grain.MapDataset, num_threads: int, num_workers: int) -> Iterator[dict]:
    """Each thread makes whole batches; up to 2 per thread wait in the buffer."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    dataset = batches.to_iter_dataset(options)
    if num_workers:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags (defaults outside absl.app)
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                                      worker_init_fn=_worker_init)
    return iter(dataset)


def _worker_init(index: int, count: int) -> None:
    """Runs first in each input worker process. Ctrl-C reaches the whole process group:
    from here on the worker leaves it to the trainer, which saves and then stops its
    workers (with a traceback from each of them before). And the worker exits once the
    trainer is gone (after a `kill -9` it waited forever, holding the trainer's output
    pipes open)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trainer = os.getppid()

    def exit_with_the_trainer():
        while os.getppid() == trainer:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=exit_with_the_trainer, daemon=True).start()


def train_batches(source: Sequence, transform: Callable, global_batch: int, *, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  num_threads: int = 8, num_workers: int = 0) -> Iterator[dict]:
    """This process's share of global batches `start_step, start_step + 1, ...`, forever.

    Global batch `s` holds examples `s*B .. (s+1)*B - 1` of an endless stream of epochs,
    each a fresh shuffle of `source`; augmentation randomness is tied to the stream index.
    Process `p` gets rows `p, p + P, ...` of it (as `{"image", "label"}` arrays).
    """
    local = local_batch(global_batch, process_count)
    stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    stream = stream.random_map(transform)
    batches = stream[process_index::process_count].batch(local, drop_remainder=True)
    return _iterate(batches[start_step:], num_threads, num_workers)


def eval_batches(source: Sequence, transform: Callable, global_batch: int, *,
                 process_index: int = 0, process_count: int = 1,
                 num_threads: int = 8, num_workers: int = 0) -> Iterator[dict]:
    """One pass over `source` in global batches; the last is padded, with `mask` 0 on the
    padding, so that every example counts exactly once for any batch and process count."""
    local = local_batch(global_batch, process_count)
    size = len(source)
    num_batches = -(-size // global_batch)

    def example(i):
        batch, row = divmod(i, local)
        index = batch * global_batch + process_index * local + row
        out = transform(source[min(index, size - 1)])
        return dict(out, mask=np.float32(index < size))

    batches = grain.MapDataset.range(num_batches * local).map(example).batch(local)
    return _iterate(batches, num_threads, num_workers)


@dataclasses.dataclass
class GrainInput:
    """An `InputPipeline` over random-access sources: `train_batches`/`eval_batches` above."""

    train_source: Sequence
    train_transform: Callable
    eval_source: Sequence
    eval_transform: Callable
    batch_size: int
    seed: int
    num_threads: int = 8
    num_workers: int = 0
    fingerprint: str = ""  # what was read, in short: the same wherever the data is
    damaged_files: Callable[[], list[str]] = list  # files found damaged (after an error)

    @classmethod
    def from_config(cls, config, train_source, train_transform, eval_source,
                    eval_transform, **kw) -> "GrainInput":
        """With `config`'s batch_size, seed, num_threads and num_workers."""
        return cls(train_source, train_transform, eval_source, eval_transform,
                   batch_size=config.batch_size, seed=config.seed,
                   num_threads=config.num_threads, num_workers=config.num_workers, **kw)

    @property
    def num_train(self) -> int:
        return len(self.train_source)

    @property
    def num_eval(self) -> int:
        return len(self.eval_source)

    def train_batches(self, start_step, process_index, process_count):
        return train_batches(self.train_source, self.train_transform, self.batch_size,
                             seed=self.seed, start_step=start_step,
                             process_index=process_index, process_count=process_count,
                             num_threads=self.num_threads, num_workers=self.num_workers)

    def eval_batches(self, global_batch, process_index, process_count):
        return eval_batches(self.eval_source, self.eval_transform, global_batch,
                            process_index=process_index, process_count=process_count,
                            num_threads=self.num_threads, num_workers=self.num_workers)


def prefetch_to_device(batches: Iterator, put: Callable, depth: int = 2) -> Iterator:
    """`put(batch)` for each of `batches`, issued `depth` batches ahead: JAX copies to the
    devices asynchronously, so the copy of the next batch overlaps the current step."""
    queue = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) == depth:
            yield queue.popleft()
    yield from queue
