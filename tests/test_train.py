"""Training system: data order and evaluation, sharding, checkpoints, resume, failures."""

import json
import logging
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lip_jax.data import fashion_mnist, pipeline
from lip_jax.train import loop, workdir
from lip_jax.train.config import load_config
from lip_jax.train.metrics import Progress
from lip_jax.train.preemption import Preempted
from train_helpers import (checkpoint_steps, final_params, finish, make_fashion_mnist,
                           output, tiny_config, train_process, train_processes, wait_for)


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


def test_nan_loss_stops_naming_the_newest_checkpoint_which_is_intact(data_dir, tmp_path):
    config = tiny_config(data_dir, learning_rate=1e12, checkpoint_every_secs=1e-9)
    with pytest.raises(FloatingPointError, match=r"at step \d+: stopping; the newest "
                                                 r"checkpoint \(step (\d+)\)") as error:
        loop.train_and_evaluate(config, tmp_path)
    named = int(re.search(r"checkpoint \(step (\d+)\)", str(error.value))[1])
    state = final_params(tmp_path, data_dir)
    assert int(state.step) == named == checkpoint_steps(tmp_path)[-1]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_a_non_finite_state_is_never_saved(data_dir, tmp_path):
    config = tiny_config(data_dir, checkpoint_every_secs=1e-9)
    config.learning_rate = float("inf")  # step 1: finite loss and gradient, inf parameters
    with pytest.raises(FloatingPointError, match=r"the state after step 1 holds non-finite "
                                                 r"values: not saved; no checkpoint has been "
                                                 r"saved"):
        loop.train_and_evaluate(config, tmp_path)
    assert checkpoint_steps(tmp_path) == []


def _truncate_files(folder):
    for f in folder.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_truncated_checkpoints_are_set_aside_retrained_and_saved_again(data_dir, tmp_path):
    config = tiny_config(data_dir, max_steps=2, checkpoint_every_secs=1e-9)
    loop.train_and_evaluate(config, tmp_path)
    assert checkpoint_steps(tmp_path) == [1, 2]
    intact = final_params(tmp_path, data_dir)
    _truncate_files(tmp_path / "checkpoints" / "2")
    loop.train_and_evaluate(config, tmp_path)  # falls back to step 1, trains step 2 again
    assert checkpoint_steps(tmp_path) == [1, 2]
    assert (tmp_path / "checkpoints" / "2.corrupt-1").is_dir()  # set aside, not deleted
    jax.tree.map(np.testing.assert_array_equal, intact, final_params(tmp_path, data_dir))

    for step in ("1", "2"):
        _truncate_files(tmp_path / "checkpoints" / step)
    for _ in range(2):  # a rerun fails alike: it does not start afresh beside them
        with pytest.raises(ValueError, match=r"no checkpoint in .* restores: step 2: "
                                             r".*damaged.*; step 1: .*nothing was set aside"):
            loop.train_and_evaluate(config, tmp_path)
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
            "1", "2", "2.corrupt-1"]


def test_a_second_trainer_on_a_workdir_refuses(data_dir, tmp_path):
    with workdir.Claim(tmp_path):  # the first trainer
        with pytest.raises(BlockingIOError, match=r"is in use by another trainer \(pid \d+ on "):
            loop.train_and_evaluate(tiny_config(data_dir), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"]  # nothing overwritten


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished two-step run, profiled, started over a killed save's leftovers; its log
    messages and result."""
    workdir = tmp_path_factory.mktemp("finished")
    leftover = workdir / "checkpoints" / "7.orbax-checkpoint-tmp-1234567"
    leftover.mkdir(parents=True)
    (leftover / "half_written").write_bytes(b"\0" * 10)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lip_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = loop.train_and_evaluate(
            tiny_config(data_dir, max_steps=2, profile_steps=(1, 2)), workdir)
    finally:
        logger.removeHandler(handler)
    return workdir, messages, result


def test_status_lines_before_loading_and_compiling(finished_run):
    _, messages, _ = finished_run
    assert messages.index("loading fashion_mnist") < messages.index("compiling the train step")


def test_profile_steps_write_a_trace(finished_run):
    workdir, _, _ = finished_run
    assert list((workdir / "profile").rglob("*.xplane.pb"))


def test_temporary_directories_of_killed_saves_are_cleaned_up_at_start(finished_run):
    workdir, _, _ = finished_run
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]


def test_rerunning_a_finished_run_returns_its_final_metrics(finished_run, data_dir):
    workdir, _, result = finished_run
    again = loop.train_and_evaluate(tiny_config(data_dir, max_steps=2), workdir)
    assert again["step"] == 2 and again["eval_count"] == 103
    assert {k: again[k] for k in result} == result


def test_a_checkpoint_of_another_model_is_named_in_one_line(finished_run, data_dir):
    workdir, _, _ = finished_run
    other = tiny_config(data_dir, model_kwargs={"widths": (8, 8), "convs_per_stage": (1, 1)})
    for run in (loop.evaluate_checkpoint, loop.train_and_evaluate):
        with pytest.raises(ValueError, match=r"^checkpoint in .* was written by model lip_cnn "
                                             r".*\W4, 8\W.* on fashion_mnist \(.*config.json\), "
                                             r"not model lip_cnn .*\W8, 8\W.*$"):
            run(other, workdir)


def test_failed_commands_create_no_directories(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="typo does not exist, and config.init_from"):
        loop.evaluate_checkpoint(tiny_config(data_dir), tmp_path / "typo")
    with pytest.raises(FileNotFoundError):
        loop.train_and_evaluate(tiny_config(tmp_path / "no_data"), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_log_lines_print_above_the_progress_bar(capsys):
    handler = logging.StreamHandler(sys.stderr)
    logging.root.addHandler(handler)
    try:
        progress = Progress(0, 10, 32, interactive=True)
        progress.update(3, loss=1.0)
        logging.getLogger("lip_jax").warning("step 3: eval top-1 0.5")
        progress.close()
    finally:
        logging.root.removeHandler(handler)
    lines = re.split(r"[\r\n]", capsys.readouterr().err)
    assert "step 3: eval top-1 0.5" in lines  # a line of its own, not glued to the bar


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
    assert loop.Trainer(tiny_config(data_dir, eval_batch_size=12)).eval_batch_size == 16


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train", str(tmp_path))


def test_sigkill_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    # 40 steps, killed after the third: the rest outlasts the polling (with 12 steps,
    # killed after the fifth, the run sometimes finished first)
    fields = dict(max_steps=40, checkpoint_every_secs=1e-9, cache=tmp_path / "compiled")
    straight = train_process(tmp_path / "straight", data_dir, **fields)
    assert finish([straight]) and straight.returncode == 0, output(straight)

    workdir = tmp_path / "killed"
    killed = train_process(workdir, data_dir, **fields)
    wait_for(lambda: max(checkpoint_steps(workdir), default=0) >= 3, [killed])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = train_process(workdir, data_dir, **fields)  # the dead trainer's lock is free
    text = finish([resumed])[0]
    assert resumed.returncode == 0, text
    assert "resumed from the checkpoint at step" in text
    a, b = final_params(tmp_path / "straight", data_dir), final_params(workdir, data_dir)
    assert int(a.step) == int(b.step) == 40
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_saves_and_exits_with_the_retry_status(data_dir, tmp_path, signum):
    process = train_process(tmp_path, data_dir, max_steps=100000)
    metrics = tmp_path / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
             [process])
    process.send_signal(signum)
    text = finish([process], timeout=120)[0]
    assert process.returncode == Preempted(0).code == 75, text
    assert f"{signum.name}: saving a checkpoint" in text
    stopped = int(re.search(r"stopped at step (\d+) by a stop signal", text)[1])
    logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert checkpoint_steps(tmp_path)[-1] == stopped == logged >= 3


def test_the_default_job_evaluates_every_example_on_16_devices(tmp_path):
    data = make_fashion_mnist(tmp_path / "data", num_train=128, num_test=1500)
    process = train_process(tmp_path / "run", data, devices=16, max_steps=2, batch_size=64,
                            eval_batch_size=1000)
    text = finish([process])[0]
    assert process.returncode == 0, text
    assert "config.eval_batch_size = 1000, at most the 1500 evaluation examples, rounded up to " \
        "a multiple of the 16 devices" in text
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_count"] == 1500


def test_two_processes_agree_with_one(data_dir, tmp_path):
    fields = dict(max_steps=4, eval_batch_size=40)
    single = train_process(tmp_path / "one", data_dir, devices=4, **fields)
    two = train_processes(2, tmp_path / "two", data_dir, devices=2, **fields)
    outputs = finish([single, *two])
    assert [p.returncode for p in (single, *two)] == [0, 0, 0], outputs
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


def test_profile_steps_beyond_the_run_are_named(data_dir):
    """They traced nothing, silently."""
    with pytest.raises(ValueError, match=r"config.profile_steps = \(9, 9\): beyond the "
                                         r"run's 2 steps"):
        loop.Trainer(tiny_config(data_dir, max_steps=2, profile_steps=(9, 9)))


WORKER = """
import os, signal, subprocess, sys, time
if sys.argv[1] == "trainer":  # starts a worker, waits until it is set up, then dies
    worker = subprocess.Popen([sys.executable, __file__, "worker"], stdout=subprocess.PIPE)
    print(worker.pid, worker.stdout.readline().decode().strip(), flush=True)
else:
    from lip_jax.data.pipeline import _worker_init
    _worker_init(0, 1)
    print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN, flush=True)
    time.sleep(60)
"""


def test_input_workers_leave_ctrl_c_to_the_trainer_and_exit_with_it(tmp_path):
    """grain workers killed by a terminal's Ctrl-C left the trainer waiting; after a
    `kill -9` of the trainer they lived on, holding its output pipes open."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = subprocess.run([sys.executable, script, "trainer"], capture_output=True, text=True,
                         timeout=120).stdout.split()
    pid, ignores_ctrl_c = int(out[0]), out[1]
    assert ignores_ctrl_c == "True"
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie has exited
