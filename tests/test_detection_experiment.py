"""experiments/detect_small_objects.py end to end on a minuscule grid: the report's format,
re-evaluation from its files alone, reuse of finished runs, never across recipes."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTED = {"backbone_pool", "roi_pool", "seed", "steps", "AP", "AP50", "AP75", "AP_S",
            "AP_M", "AP_L", "detections"}


def run(tmp_path, *extra):
    command = [sys.executable, "experiments/detect_small_objects.py", "--backbone-pools",
               "strided", "--roi-pools", "align", "--seeds", "0", "--steps", "2",
               "--warmup-steps", "1", "--width", "4", "--features", "8", "--train-images",
               "8", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"),
               *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as on the machine the grid ran on
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith("[")]


def test_a_tiny_grid_reports_as_specified_and_reuses_runs_only_of_the_same_recipe(tmp_path):
    pycocotools = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out"
    assert "reused" not in run(tmp_path, "--val-images", "6")[0]
    report = json.loads((out / "detection.json").read_text())
    assert set(report) == {"ground_truth", "runs"} and len(report["runs"]) == 1
    entry = report["runs"][0]
    assert set(entry) == REPORTED and entry["steps"] == 2 and entry["seed"] == 0
    assert (entry["backbone_pool"], entry["roi_pool"]) == ("strided", "align")
    for name in ("detection.png", "detection_examples.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| strided | align |" in (out / "detection.md").read_text()

    truth = pycocotools.COCO(str(out / report["ground_truth"]))
    assert len(truth.getImgIds()) == 6
    with gzip.open(out / entry["detections"], "rt") as f:
        detections = json.load(f)
    assert detections  # untrained class scores (~1/7) pass the 0.05 threshold
    evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert [entry[k] for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")] == list(
        evaluation.stats[:6])
    record = json.loads(next((out / "runs").iterdir()).read_text())
    assert record["recipe"]["optimizer"]["steps"] == 2 and record["cpu_s"] > 0

    assert "reused" in run(tmp_path, "--val-images", "6")[0]
    assert "reused" not in run(tmp_path, "--val-images", "5")[0]  # another recipe
    assert len(list((out / "runs").iterdir())) == 2
    assert len(json.loads((out / "detection.json").read_text())["runs"]) == 1
