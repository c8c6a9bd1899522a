"""The command line and the benchmark scripts run end to end (tiny sizes, no timings checked)."""

import json
import runpy
import sys
from pathlib import Path

from lip_jax import cli

ROOT = Path(__file__).resolve().parents[1]


def run_experiment(script, monkeypatch, *args):
    """Runs experiments/`script` as `python experiments/script args...`."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(ROOT / "experiments" / script), run_name="__main__")


def test_demo_reports_special_cases(capsys):
    cli.main(["demo"])
    lines = capsys.readouterr().out.splitlines()
    errors = {line[:30].strip(): float(line.split()[-1]) for line in lines[2:]}
    assert errors["lip_pool, logits 0"] < 1e-6
    assert errors["LIP(ProjectionLogit) at init"] < 1e-6
    assert errors["lip_pool, logits 40 x"] < errors["lip_pool, logits 4 x"]


def test_bench_pooling_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    run_experiment("bench_pooling.py", monkeypatch, "--shapes", "2,8,8,4", "--reps", "1",
                   "--pallas", "--against", "cad5062", "--no-torch", "--out", str(out))
    result = json.loads(out.read_text())
    impls = {row["impl"] for row in result["rows"]}
    assert {"lip_pool xla", "lip_pool xla (0,12)", "lip_pool pallas_gpu",
            "lip_pool pallas_mosaic_gpu", "lip_pool pallas_tpu", "lip_pool @cad5062",
            "naive autodiff", "flax avg_pool", "x * 1.5"} == impls
    assert all(row["forward_ms"] > 0 for row in result["rows"])
    assert result["default"] == "lip_pool xla" and result["versions"]["jax"]


def test_bench_models_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "models.json"
    run_experiment("bench_models.py", monkeypatch, "--pairs", "lip_cnn:cnn", "--reps", "1",
                   "--out", str(out))
    result = json.loads(out.read_text())
    (pair,) = result["pairs"]
    assert pair["lip"] == "lip_cnn" and pair["throughput_ratio"] > 0
    assert all(row["peak_bytes"] > 0 for row in result["rows"])


def test_bench_xla_parts_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "parts.json"
    run_experiment("bench_xla_parts.py", monkeypatch, "--shapes", "2,7,6,4", "--reps", "1",
                   "--inner", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {row["dtype"] for row in rows} == {"float32", "bfloat16"}
    assert {"xla (default graph)", "bounded logits (fast form only)",
            "naive autodiff"} <= {row["variant"] for row in rows}
    assert all(row["forward_backward_ms"] > 0 for row in rows)
