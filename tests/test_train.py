"""Training system: data order and evaluation, sharding, checkpoints, resume, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lip_jax.data import fashion_mnist, pipeline
from lip_jax.train import loop
from lip_jax.train.checkpoint import Checkpoints
from lip_jax.train.config import load_config
from train_helpers import make_fashion_mnist, tiny_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def _batch(trainer, step=0):
    batches = trainer.input.train_batches(step, 0, 1)
    return trainer.global_batch(next(batches))


def test_eval_counts_every_example_once_for_any_batch_and_process_count():
    source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": i} for i in range(1003)]
    for global_batch, processes in ((100, 1), (100, 2), (64, 4), (2000, 2)):
        seen = []
        for p in range(processes):
            for batch in pipeline.eval_batches(source, lambda e: e, global_batch,
                                               process_index=p, process_count=processes):
                assert len(batch["label"]) == global_batch // processes
                seen += list(batch["label"][batch["mask"] > 0])
        assert sorted(seen) == list(range(1003))


def test_training_order_is_independent_of_process_count_and_resumable():
    source = [{"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i} for i in range(50)]
    augment = lambda e, rng: dict(e, noise=rng.integers(1 << 30))
    one = pipeline.train_batches(source, augment, 8, seed=3)
    steps = [next(one) for _ in range(12)]  # crosses epoch boundaries
    epoch = [l for b in steps[:6] for l in b["label"]]
    assert len(set(epoch)) == 48  # a shuffle, no repeats within an epoch
    for p in range(2):
        resumed = pipeline.train_batches(source, augment, 8, seed=3, start_step=7,
                                         process_index=p, process_count=2)
        for step in range(7, 12):
            batch = next(resumed)
            np.testing.assert_array_equal(batch["label"], steps[step]["label"][p::2])
            np.testing.assert_array_equal(batch["noise"], steps[step]["noise"][p::2])


def test_step_on_8_devices_equals_the_step_on_1(data_dir):
    assert jax.device_count() == 8
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = loop.Trainer(tiny_config(data_dir), devices=devices)
        state = trainer.init_state()
        for step in range(2):
            state, metrics = trainer.train_step(state, _batch(trainer, step))
        results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(data_dir, tmp_path):
    config = tiny_config(data_dir, learning_rate=1e12, checkpoint_every_secs=1e-9)
    with pytest.raises(FloatingPointError, match=r"at step \d+: stopping; the last good "
                                                 r"checkpoint \(step \d+\) is intact"):
        loop.train_and_evaluate(config, tmp_path)
    trainer = loop.Trainer(config)
    checkpoints = Checkpoints(tmp_path / "checkpoints", 3)
    state = checkpoints.restore_latest(trainer.abstract_state())
    checkpoints.close()
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def _save_steps(trainer, directory, count):
    checkpoints = Checkpoints(directory, 5)
    state = trainer.init_state()
    for step in range(count):
        state, _ = trainer.train_step(state, _batch(trainer, step))
        checkpoints.save(state)
    checkpoints.wait()
    checkpoints.close()
    return state


def test_corrupt_latest_checkpoint_falls_back_then_fails_clearly(data_dir, tmp_path):
    trainer = loop.Trainer(tiny_config(data_dir))
    directory = tmp_path / "checkpoints"
    _save_steps(trainer, directory, 2)
    for f in (directory / "2").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate every file
    checkpoints = Checkpoints(directory, 5)
    assert int(checkpoints.restore_latest(trainer.abstract_state()).step) == 1
    for f in (directory / "1").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(RuntimeError, match="no checkpoint in .* restores"):
        checkpoints.restore_latest(trainer.abstract_state())
    checkpoints.close()


@pytest.mark.parametrize("override, message", [
    ("--config.batch_size=-4", r"config.batch_size = -4: must be > 0"),
    ("--config.model=lip_resnet51", "config.model = 'lip_resnet51': unknown model"),
    ("--config.dtype=float16", r'config.dtype .* must be "float32" or "bfloat16"'),
    ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
    ("--config.schedule=linear", "config.schedule"),
    ("config.batch_size=4", "not of the form --config.field=value"),
])
def test_bad_config_fails_before_anything_compiles(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_batch_not_divisible_by_devices_is_named(data_dir):
    with pytest.raises(ValueError, match=r"config.batch_size = 12 is not divisible by the 8"):
        loop.Trainer(tiny_config(data_dir, batch_size=12))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train", str(tmp_path))


def _cli(workdir, data_dir, *extra, env=None, **fields):
    """`lip-jax train` in a subprocess on 2 CPU devices."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "lip_jax", "train", "--workdir", str(workdir), *extra,
         *tiny_overrides(data_dir, **fields)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _final_params(workdir, data_dir, **fields):
    trainer = loop.Trainer(tiny_config(data_dir, **fields), devices=jax.devices()[:2])
    checkpoints = Checkpoints(Path(workdir) / "checkpoints", 3)
    state = checkpoints.restore_latest(trainer.abstract_state())
    checkpoints.close()
    return jax.device_get(state)


def _wait_for(predicate, process, timeout=300):
    end = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def test_sigkill_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    fields = dict(max_steps=12, checkpoint_every_secs=1e-9)
    straight = _cli(tmp_path / "straight", data_dir, **fields)
    assert straight.wait() == 0, straight.stdout.read()

    workdir = tmp_path / "killed"
    killed = _cli(workdir, data_dir, **fields)
    _wait_for(lambda: any(p.name.isdigit() and int(p.name) >= 5
                          for p in (workdir / "checkpoints").glob("*")), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = _cli(workdir, data_dir, **fields)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output
    assert "resumed from the checkpoint at step" in output
    a, b = _final_params(tmp_path / "straight", data_dir), _final_params(workdir, data_dir)
    assert int(a.step) == int(b.step) == 12
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sigterm_saves_and_exits_cleanly(data_dir, tmp_path):
    process = _cli(tmp_path, data_dir, max_steps=100000)
    metrics = tmp_path / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "SIGTERM: saving a checkpoint" in output
    steps = [int(p.name) for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()]
    logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert steps and max(steps) >= logged >= 3


def test_two_processes_agree_with_one(data_dir, tmp_path):
    fields = dict(max_steps=4, eval_batch_size=40)
    single = _cli(tmp_path / "one", data_dir, env=dict(
        XLA_FLAGS="--xla_force_host_platform_device_count=4"), **fields)
    assert single.wait() == 0, single.stdout.read()
    port = 20000 + os.getpid() % 20000
    workers = [_cli(tmp_path / "two", data_dir, **fields, distributed=True,
                    coordinator_address=f"localhost:{port}", num_processes=2, process_id=i)
               for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "accuracy", "eval_top1", "eval_top5", "eval_count"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    assert one[-1]["eval_count"] == 103


def test_init_from_converted_weights(data_dir, tmp_path):
    from lip_jax import pretrained
    trainer = loop.Trainer(tiny_config(data_dir, seed=1))
    state = trainer.init_state()
    saved = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    saved = jax.tree.map(lambda v: v + 0.5, saved)
    pretrained.save_variables(tmp_path / "weights", "lip_cnn", saved)
    started = loop.Trainer(tiny_config(data_dir, init_from=str(tmp_path / "weights")))
    restored = jax.device_get(started.init_state())
    jax.tree.map(np.testing.assert_array_equal, saved["params"], restored.params)
    wrong = tiny_config(data_dir, init_from=str(tmp_path / "weights"),
                        model_kwargs={"widths": (4, 16), "convs_per_stage": (1, 1)})
    with pytest.raises(ValueError, match="do not fit the model"):
        loop.Trainer(wrong).init_state()
