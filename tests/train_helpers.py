"""A tiny Fashion-MNIST-format dataset, a tiny training config, and `lip-jax train` run in
subprocesses (one, or several joined by jax.distributed over gloo), as the tests use them."""

import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lip_jax.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


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


def train_process(workdir, data_dir, *extra, devices=2, cache=None, command="train", cwd=ROOT,
                  **fields) -> subprocess.Popen:
    """`lip-jax train` (or `command`) of the tiny config in a subprocess on `devices` CPU
    devices, run in `cwd`; its output (stdout and stderr) goes to a file that
    `output(process)` reads. `cache`: a directory where runs of the same program share
    compiled steps (JAX's cache)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the trainer
    process = subprocess.Popen(
        [sys.executable, "-m", "lip_jax", command, "--workdir", str(workdir), *extra,
         *tiny_overrides(data_dir, **fields)],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    process.log = log
    return process


def output(process) -> str:
    process.log.seek(0)
    return process.log.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_processes(count, workdir, data_dir, devices=1, differ=None,
                    **fields) -> list[subprocess.Popen]:
    """`count` trainers joined by jax.distributed (gloo), `devices` CPU devices each;
    `differ` maps a process index to keyword arguments of `train_process` that it alone
    gets (other fields, or another `cwd`)."""
    address = f"localhost:{free_port()}"
    return [train_process(**{"workdir": workdir, "data_dir": data_dir, "devices": devices,
                             "distributed": True, "coordinator_address": address,
                             "num_processes": count, "process_id": i, **fields,
                             **(differ or {}).get(i, {})}) for i in range(count)]


def finish(processes, timeout=300) -> list[str]:
    """Each process's output once all have exited; kills them all and fails after
    `timeout` seconds, so that a hang fails the test instead of blocking CI."""
    end = time.monotonic() + timeout
    try:
        for p in processes:
            p.wait(timeout=max(end - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        _fail(processes, f"timed out after {timeout} s")
    return [output(p) for p in processes]


def wait_for(predicate, processes, timeout=300) -> None:
    """Polls `predicate` until true; fails if a process exits first or on timeout."""
    end = time.monotonic() + timeout
    while not predicate():
        if any(p.poll() is not None for p in processes):
            _fail(processes, "a process exited early")
        if time.monotonic() > end:
            _fail(processes, f"timed out after {timeout} s")
        time.sleep(0.1)


def _fail(processes, reason):
    for p in processes:
        p.kill()
        p.wait()
    raise AssertionError(reason + ":\n" + "\n---\n".join(
        f"exit status {p.returncode}:\n{output(p)}" for p in processes))


def final_params(workdir, data_dir, **fields):
    """The newest checkpoint's state in `workdir`, on the host."""
    import jax

    from lip_jax.train import loop
    from lip_jax.train.checkpoint import Checkpoints
    trainer = loop.Trainer(tiny_config(data_dir, **fields), devices=jax.devices()[:2])
    checkpoints = Checkpoints(Path(workdir) / "checkpoints")
    state = checkpoints.restore_latest(trainer.abstract_state())
    checkpoints.close()
    return jax.device_get(state)


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").glob("*")
                  if p.name.isdigit())
