"""experiments/compare_pooling.py end to end on a minuscule grid: runs, resumes, reports."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from train_helpers import make_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def test_compare_pooling_runs_a_tiny_grid_resumes_and_writes_every_report(tmp_path):
    data_dir = make_fashion_mnist(tmp_path / "fmnist", num_train=128, num_test=40)
    out = tmp_path / "out"
    command = [sys.executable, "experiments/compare_pooling.py", "--datasets", "fashion_mnist",
               "--pools", "strided", "lip", "--seeds", "0", "--width", "4", "--max-steps", "2",
               "--timing-steps", "1",
               "--data-dir", str(data_dir), "--workdir", str(tmp_path / "work"),
               "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as on the machine the grid ran on
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    finished_lines = [line for line in first.stdout.splitlines() if line.startswith("[")]
    assert len(finished_lines) == 3  # strided, lip, lip + global LIP

    report = json.loads((out / "compare_pooling.json").read_text())
    runs = {(r["pool"], r["global_pool"]): r for r in report["runs"]}
    assert set(runs) == {("strided", "avg"), ("lip", "avg"), ("lip", "lip")}
    for run in runs.values():
        assert run["dataset"] == "fashion_mnist" and run["seed"] == 0 and run["steps"] == 2
        assert 0 <= run["test_accuracy"] <= 1 and run["step_time_ratio"] > 0
    assert runs["strided", "avg"]["step_time_ratio"] == 1
    assert runs["strided", "avg"]["params"] < runs["lip", "avg"]["params"] < runs["lip", "lip"][
        "params"]
    assert report["command"] and report["machine"] and report["versions"]["jax"] and report["date"]
    assert "| lip | lip |" in (out / "compare_pooling.md").read_text()
    for name in ("compare_pooling.png", "compare_pooling_importance_fashion_mnist.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    finished = {p: p.stat().st_mtime_ns for p in (out / "compare_pooling_runs").iterdir()}
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert {p: p.stat().st_mtime_ns for p in (out / "compare_pooling_runs").iterdir()} == finished


def test_runs_are_named_by_their_whole_recipe():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import compare_pooling
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    args = argparse.Namespace(width=16, max_steps=-1, data_dir="")
    name = lambda **kw: compare_pooling.run_name(compare_pooling.make_config(
        argparse.Namespace(**{**vars(args), **kw}), "fashion_mnist", "lip", "avg", 0))
    assert name().startswith("fashion_mnist-lip-avg-s0-")
    assert len({name(), name(width=8), name(max_steps=2), name(max_steps=3)}) == 4
    assert name(data_dir="/elsewhere") == name()  # where the data is read from is no recipe
    committed = ROOT / "experiments" / "results" / "compare_pooling_runs" / f"{name()}.json"
    assert json.loads(committed.read_text())["recipe"]["model_kwargs"]["width"] == 16
