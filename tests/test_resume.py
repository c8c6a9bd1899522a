"""A resume against the run's record (config.json): changes of what the run computes are
refused unless allowed and then recorded; cadence changes are recorded; the record, the
wall time and the work directory's guards hold across sessions."""

import json
import shutil

import jax
import numpy as np
import pytest

from lip_jax.train import cluster, loop, workdir
from lip_jax.train.config import KIND, RECORDED
from train_helpers import make_fashion_mnist, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A finished two-step run and its result."""
    run = tmp_path_factory.mktemp("trained") / "run"
    return run, loop.train_and_evaluate(tiny_config(data_dir, max_steps=2), run)


@pytest.fixture()
def finished(trained, tmp_path):
    """A copy of the finished run, for tests that change it."""
    run, result = trained
    return shutil.copytree(run, tmp_path / "run"), result


def _record(run):
    return json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("field, value", [
    ("batch_size", 64), ("seed", 1), ("learning_rate", 0.1), ("optimizer", "sgd"),
    ("dtype", "bfloat16"), ("bn_group_size", 8), ("label_smoothing", 0.1), ("max_steps", 3),
])
def test_a_resume_that_changes_what_the_run_computes_is_refused(data_dir, trained, field,
                                                                 value):
    run, _ = trained
    before = (run / "config.json").read_text()
    with pytest.raises(ValueError, match=rf"records this run with other values of fields that "
                                         rf"change what it computes: {field}: .* -> "
                                         rf"{json.dumps(value)}; .*--allow-config-change"):
        loop.train_and_evaluate(tiny_config(data_dir, **{"max_steps": 2, field: value}), run)
    assert (run / "config.json").read_text() == before


def test_an_allowed_change_is_recorded_and_cadence_changes_need_no_permission(data_dir,
                                                                              finished):
    run, _ = finished
    loop.train_and_evaluate(tiny_config(data_dir, max_steps=2, log_every_steps=2,
                                        num_threads=1), run)
    result = loop.train_and_evaluate(tiny_config(data_dir, max_steps=3, log_every_steps=2,
                                                 num_threads=1, learning_rate=0.2), run,
                                     allow_config_change=True)
    assert result["step"] == 3
    record = _record(run)
    assert record["max_steps"] == 3 and record["learning_rate"] == 0.2
    assert record["changes"] == [
        {"step": 2, "field": "num_threads", "old": 2, "new": 1},
        {"step": 2, "field": "log_every_steps", "old": 1, "new": 2},
        {"step": 2, "field": "max_steps", "old": 2, "new": 3},
        {"step": 2, "field": "learning_rate", "old": 0.4, "new": 0.2}]


def test_a_resume_on_other_data_is_refused_unless_allowed_and_recorded(finished,
                                                                     tmp_path):
    """Another data_dir (more examples, other ones) resumed silently and changed the run's
    length mid-schedule: config.json records the data read."""
    run, _ = finished
    other = make_fashion_mnist(tmp_path / "other", num_train=320, seed=1)
    recorded = _record(run)["data"]
    assert recorded["num_train"] == 256 and recorded["num_eval"] == 103
    with pytest.raises(ValueError, match=r"fields that change what it computes: data: "
                                         r'\{"num_train": 256, .* -> \{"num_train": 320, '):
        loop.train_and_evaluate(tiny_config(other, max_steps=2), run)
    loop.train_and_evaluate(tiny_config(other, max_steps=2), run, allow_config_change=True)
    record = _record(run)
    assert record["data"]["num_train"] == 320
    assert [c["field"] for c in record["changes"]] == ["data_dir", "data"]


def test_a_resume_without_the_runs_record_is_refused_unless_allowed(data_dir, finished):
    """With config.json deleted, a resume that changed the learning rate went on silently
    (and was recorded as the run's own)."""
    run, _ = finished
    (run / "config.json").unlink()
    config = tiny_config(data_dir, max_steps=3, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"holds checkpoints \(step 2\) but not config.json"):
        loop.train_and_evaluate(config, run)
    assert not (run / "config.json").exists()
    assert loop.train_and_evaluate(config, run, allow_config_change=True)["step"] == 3
    assert _record(run)["learning_rate"] == 0.1


def test_a_failed_claim_removes_only_what_it_made(tmp_path):
    """A failing trainer removed a directory another trainer had made (and finished a run
    in) since it first looked, and left the parents it made."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other").mkdir()
    for where, kept in ((tmp_path / "runs" / "new" / "a" / "run", ["other"]),
                        (tmp_path / "runs" / "other", ["other"])):
        with pytest.raises(RuntimeError):
            with workdir.Claim(where):
                raise RuntimeError("fails before the run starts")
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == kept
    assert sorted(p.name for p in (tmp_path / "runs" / "other").iterdir()) == ["lock"]


def test_launch_settings_are_not_part_of_the_record():
    assert [k for k in RECORDED if KIND[k] == "launch"] == []
    assert {"distributed", "process_id", "initialization_timeout"} <= {
        k for k, kind in KIND.items() if kind == "launch"}


def test_a_finished_run_reports_its_own_wall_time(data_dir, finished):
    run, result = finished
    again = loop.train_and_evaluate(tiny_config(data_dir, max_steps=2), run)
    assert again["wall_time_s"] == result["wall_time_s"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("wall_time_s" in row for row in rows)


def test_metrics_a_user_edited_are_named_and_a_cut_off_row_is_dropped(data_dir, finished):
    run, result = finished
    metrics = run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text + '{"step": 3, "loss": 0.')  # a row cut off by a full disk
    again = loop.train_and_evaluate(tiny_config(data_dir, max_steps=2), run)
    assert again["eval_top1"] == result["eval_top1"]
    metrics.write_text("garbage\n" + text)
    with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not a metrics row"):
        loop.train_and_evaluate(tiny_config(data_dir, max_steps=2), run)


def test_hosts_that_do_not_see_process_0s_token_are_named(tmp_path, monkeypatch):
    """As when every host uses a local disk: process 1 does not find the lock file."""
    sent = []

    def exchange(what, value):
        sent.append(what)
        return [value, value if what == "the work directory lock" else False]

    monkeypatch.setattr(cluster, "exchange", exchange)
    with pytest.raises(ValueError, match=r"process 1 do not see .*lock that process 0 wrote: "
                                         "every process must use the same work directory"):
        with workdir.Claim(tmp_path / "run"):
            pass
    assert sent == ["the work directory lock", "the work directory"]
    assert not (tmp_path / "run").exists()  # created for the run, removed


def test_eval_needs_no_batch_size_that_the_devices_divide(data_dir):
    trainer = loop.Trainer(tiny_config(data_dir, batch_size=32), devices=jax.devices()[:3],
                           training=False)
    state = trainer.init_state()
    assert trainer.evaluate(state)["eval_count"] == 103


def test_labels_beyond_the_classes_are_refused_on_the_host(data_dir):
    trainer = loop.Trainer(tiny_config(data_dir))
    batch = next(trainer.input.train_batches(0, 0, 1))
    batch["label"][3] = 10
    with pytest.raises(ValueError, match=r"a batch of fashion_mnist holds labels outside 0..9 "
                                         r"\(1 of them\), e.g. 10 at example 3"):
        trainer.global_batch(batch)
    batch["label"][3] = -1
    with pytest.raises(ValueError, match="e.g. -1 at example 3"):
        trainer.global_batch(batch)
    assert np.all(jax.device_get(trainer.global_batch(dict(batch, label=batch["label"] * 0))[
        "label"]) == 0)
