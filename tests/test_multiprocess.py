"""Several trainers joined by jax.distributed over gloo on CPU: every process takes the same
decision at the same step (save on time, stop on a signal), so none hangs in a barrier."""

import re
import signal

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


def test_eval_on_hosts_that_see_different_work_directories_fails_on_all_naming_it(
        data_dir, cache, tmp_path):
    trained = tmp_path / "trained"
    trainer = train_process(trained, data_dir, devices=1, cache=cache, max_steps=2)
    output = finish([trainer])[0]
    assert trainer.returncode == 0, output
    address = f"localhost:{free_port()}"
    evaluators = [train_process(workdir, data_dir, devices=1, cache=cache, command="eval",
                                distributed=True, coordinator_address=address,
                                num_processes=2, process_id=i)
                  for i, workdir in enumerate([trained, tmp_path / "elsewhere"])]
    outputs = finish(evaluators, timeout=120)  # a process left waiting would time out
    assert all(p.returncode not in (0, None) for p in evaluators), outputs
    for text in outputs:
        assert "the processes disagree on whether" in text and "[1, 0]" in text, text
