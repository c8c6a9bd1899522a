"""Several trainers joined by jax.distributed over gloo on CPU: every process takes the same
decision at the same step (save on time, stop on a signal), so none hangs in a barrier."""

import re
import signal
import time

import jax
import numpy as np
import pytest

from train_helpers import (checkpoint_steps, final_params, finish, free_port,
                           make_fashion_mnist, train_process, train_processes, wait_for)

# Saves due more often than steps take, evaluation only at the end: the run is long enough
# for a signal to arrive mid-run, short enough for CI.
FIELDS = dict(max_steps=60, checkpoint_every_secs=1e-9, eval_every_epochs=100.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compiled")


def _stop_steps(outputs) -> list[int]:
    return [int(m[1]) if (m := re.search(r"stopped at step (\d+) by a stop signal", text))
            else None for text in outputs]


@pytest.mark.parametrize("count, signals", [
    (2, {1: signal.SIGTERM}),
    (4, {3: signal.SIGTERM, 1: signal.SIGINT}),  # several processes, at different steps
], ids=["2 processes, SIGTERM to one", "4 processes, SIGTERM and SIGINT to two"])
def test_a_signal_to_some_processes_stops_all_at_one_step_and_resumes_exactly(
        data_dir, cache, tmp_path, count, signals):
    fields = dict(FIELDS, cache=cache)
    straight = train_processes(count, tmp_path / "straight", data_dir, **fields)
    outputs = finish(straight)
    assert [p.returncode for p in straight] == [0] * count, outputs  # saves every step

    workdir = tmp_path / "stopped"
    workers = train_processes(count, workdir, data_dir, **fields)
    metrics = workdir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, workers)
    for index, signum in signals.items():
        workers[index].send_signal(signum)
    outputs = finish(workers, timeout=120)
    assert [p.returncode for p in workers] == [75] * count, outputs
    stops = _stop_steps(outputs)
    assert len(set(stops)) == 1 and stops[0] < FIELDS["max_steps"], outputs
    assert checkpoint_steps(workdir)[-1] == stops[0]

    resumed = train_processes(count, workdir, data_dir, **fields)
    outputs = finish(resumed)
    assert [p.returncode for p in resumed] == [0] * count, outputs
    a, b = final_params(tmp_path / "straight", data_dir), final_params(workdir, data_dir)
    assert int(a.step) == int(b.step) == FIELDS["max_steps"]
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _one_line_errors(processes, outputs) -> list[str]:
    """Each process's `lip-jax: error:` line, after checking that all exited with status 2
    within a few seconds of each other."""
    ends = []
    for p in processes:
        assert p.returncode == 2, outputs
        ends.append(p.ended)
    assert max(ends) - min(ends) < 15, outputs  # the first to fail tells the others
    lines = [[l for l in text.splitlines() if l.startswith("lip-jax: error: ")]
             for text in outputs]
    assert all(len(found) == 1 for found in lines), outputs
    return [found[0] for found in lines]


def _finish_timed(processes, timeout=120) -> list[str]:
    """`finish`, noting when each process ended."""
    pending = list(processes)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for p in [p for p in pending if p.poll() is not None]:
            p.ended = time.monotonic()
            pending.remove(p)
        time.sleep(0.05)
    return finish(processes, timeout=1)


def test_processes_given_different_runs_all_stop_naming_each_difference(data_dir, tmp_path):
    processes = train_processes(2, tmp_path / "run", data_dir, differ={1: dict(
        max_steps=7, learning_rate=0.1, workdir=tmp_path / "elsewhere")})
    outputs = _finish_timed(processes)
    for line in _one_line_errors(processes, outputs):
        assert "the processes disagree on the run" in line
        assert "config.max_steps: -1 on process 0, 7 on process 1" in line
        assert "config.learning_rate: 0.4 on process 0, 0.1 on process 1" in line
        assert f'workdir: "{tmp_path / "run"}" on process 0' in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("second, messages", [
    ("other", ["the processes disagree on the data: data.fingerprint: "] * 2),
    ("none", ["error: process 1 of 2: Fashion-MNIST not found", "Fashion-MNIST not found"]),
], ids=["other data", "no data"])
def test_what_each_process_reads_is_compared_and_a_failure_stops_all(data_dir, tmp_path, second,
                                                                    messages):
    """The same relative data_dir, read from two directories as from two hosts' disks."""
    for name, seed in (("first", 0), ("other", 1)):
        make_fashion_mnist(tmp_path / name / "data", seed=seed)
    (tmp_path / "none").mkdir()
    processes = train_processes(2, tmp_path / "run", "data", cwd=tmp_path / "first",
                                differ={1: dict(cwd=tmp_path / second)})
    outputs = _finish_timed(processes)
    for line, message in zip(_one_line_errors(processes, outputs), messages):
        assert message in line, line
    assert not (tmp_path / "run").exists()


def test_a_process_that_never_joins_ends_the_others_in_one_line(data_dir, tmp_path):
    alone = train_process(tmp_path / "run", data_dir, devices=1, distributed=True,
                          coordinator_address=f"localhost:{free_port()}", num_processes=2,
                          process_id=0, initialization_timeout=5)
    started = time.monotonic()
    text = finish([alone], timeout=120)[0]
    assert alone.returncode == 2, text
    assert ("lip-jax: error: process 0 of 2: not every process joined at localhost:"
            in text and "within config.initialization_timeout = 5 s" in text), text
    assert time.monotonic() - started < 60  # not JAX's 300 s


def test_eval_on_different_work_directories_and_a_changed_resume_stop_all(
        data_dir, cache, tmp_path):
    trained = tmp_path / "trained"
    trainer = train_process(trained, data_dir, devices=1, cache=cache, max_steps=2)
    output = finish([trainer])[0]
    assert trainer.returncode == 0, output
    evaluators = train_processes(2, trained, data_dir, cache=cache, command="eval",
                                 differ={1: dict(workdir=tmp_path / "elsewhere")})
    for line in _one_line_errors(evaluators, _finish_timed(evaluators)):
        assert "the processes disagree on the run: workdir: " in line, line

    resumed = train_processes(2, trained, data_dir, cache=cache, max_steps=2,
                              learning_rate=0.1)
    for line in _one_line_errors(resumed, _finish_timed(resumed)):
        assert "records this run with other values of fields that change what it computes: " \
               "learning_rate: 0.4 -> 0.1" in line, line
