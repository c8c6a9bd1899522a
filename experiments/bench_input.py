"""Benchmark: training-input images/s of ImageNet-sized JPEGs, per pipeline and per core.

    python experiments/bench_input.py [--images 512] [--size 500x375] [--batch 128]
                                      [--batches 6] [--cores 1 2] [--data DIR]

Builds a synthetic imagenet2012 (JPEGs of `--size`, about 80 kB at 500 x 375; see
`lip_jax.data.imagenet_fake`) in both TFDS file formats with TFDS's own builder, then times
the training batches of `lip_jax.data.input_pipeline` (Inception crop to 224, flip, batch)
for grain threads (the default), grain worker processes and tf.data, each given `--cores`
threads or processes, after one warm-up batch. Reports images/s of wall time and images per
CPU-second of the process and its workers ("per core": robust on a shared machine), then
the host-to-device copy of a batch (`jax.make_array_from_process_local_data`, sharded over
the local devices). Prints a table and writes JSON to experiments/results/bench_input.json.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import psutil
from jax.sharding import NamedSharding, PartitionSpec as P

from lip_jax import data
from lip_jax.data import imagenet_fake
from lip_jax.train.config import load_config

PIPELINES = {  # name: (data_format, config fields for n cores)
    "grain threads": ("array_record", lambda n: dict(num_threads=n, num_workers=0)),
    "grain processes": ("array_record", lambda n: dict(num_threads=1, num_workers=n)),
    "tf.data": ("tfrecord", lambda n: dict(num_threads=n)),
}
RESNET50_IMAGES_PER_S = 3000  # one modern accelerator training ResNet-50


def prepare(folder: Path, formats, images: int, size: tuple[int, int]) -> dict[str, Path]:
    """{file_format: TFDS data_dir} of a synthetic imagenet2012, built once in `folder`."""
    dirs = {f: folder / f for f in formats}
    if not all((d / "imagenet2012").is_dir() for d in dirs.values()):
        manual = imagenet_fake.write_manual_dir(folder / "manual", num_classes=4,
                                                per_class=images // 4, num_val=4, size=size,
                                                noise=16)
        for file_format, data_dir in dirs.items():
            imagenet_fake.build(data_dir, manual, file_format)
    return dirs


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its live descendants (all threads)."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def time_pipeline(data_dir, data_format, fields, batch, batches):
    config = load_config(None, [f"--config.{k}={v!r}" for k, v in dict(
        dataset="imagenet2012", data_dir=str(data_dir), data_format=data_format,
        batch_size=batch, **fields).items()])
    iterator = data.input_pipeline(config).train_batches(0, 0, 1)
    first = next(iterator)  # warm-up: start threads/processes, fill buffers
    assert first["image"].shape == (batch, 224, 224, 3), first["image"].shape
    cpu, start = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if hasattr(iterator, "close"):
        iterator.close()
    return batches * batch / wall, batches * batch / cpu if cpu else float("nan")


def time_host_to_device(batch, reps=10):
    """images/s of copying a (batch, 224, 224, 3) uint8 batch onto the local devices."""
    devices = jax.local_devices()
    batch = -(-batch // len(devices)) * len(devices)  # shardable over the devices
    sharding = NamedSharding(jax.make_mesh((len(devices),), ("data",), devices=devices), P("data"))
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), np.uint8)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        jax.make_array_from_process_local_data(sharding, images).block_until_ready()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:]), str(devices[0].device_kind), len(devices)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="training images to generate")
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per row")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES),
                        choices=list(PIPELINES))
    parser.add_argument("--data", type=Path, help="where to build (or reuse) the datasets")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_input.json")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        formats = {PIPELINES[name][0] for name in args.pipelines}
        dirs = prepare(args.data or Path(tmp), formats, args.images, size)
        print(f"{'pipeline':>16} {'cores':>5} {'images/s':>9} {'per CPU-s':>9} "
              f"{'cores for ' + str(RESNET50_IMAGES_PER_S) + '/s':>16}")
        rows = []
        for name in args.pipelines:
            data_format, fields = PIPELINES[name]
            for cores in args.cores:
                rate, per_core = time_pipeline(dirs[data_format], data_format, fields(cores),
                                               args.batch, args.batches)
                rows.append(dict(pipeline=name, cores=cores, images_per_s=rate,
                                 images_per_cpu_s=per_core,
                                 cores_to_feed_resnet50=RESNET50_IMAGES_PER_S / per_core))
                print(f"{name:>16} {cores:>5} {rate:9.1f} {per_core:9.1f} "
                      f"{RESNET50_IMAGES_PER_S / per_core:16.1f}", flush=True)
    h2d, device, count = time_host_to_device(args.batch)
    print(f"host-to-device copy: {h2d:.0f} images/s onto {count} x {device}")
    result = dict(
        platform=platform.platform(), processor=platform.processor(),
        cpu_count=os.cpu_count(), load_average=os.getloadavg(),
        jpeg_size=list(size), images=args.images, batch=args.batch, batches=args.batches,
        rows=rows, host_to_device=dict(images_per_s=h2d, device=device, devices=count))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
