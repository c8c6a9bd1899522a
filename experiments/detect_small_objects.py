"""Detection of small objects: LIP in the backbone and in RoI pooling, measured with COCO AP.

    python experiments/detect_small_objects.py [--seeds 0 1 2] [--steps 2000] ...

Trains `lip_jax.detection.FasterRCNN` on `detection_shapes` (128x128 images of 3-8 shapes
8-64 px across in clutter) for every backbone pooling (`strided`: ResNet's strided convs,
`lip`: LIP-ResNet's layers) x RoI pooling (`align`: RoIAlign, `lip`: RoI-LIP, learned
logits) x seed, and evaluates each on the validation split with pycocotools. Writes to
`--out` (default experiments/results/detection/):

    detection.json          {"ground_truth", "runs": [{backbone_pool, roi_pool, seed, steps,
                            AP, AP50, AP75, AP_S, AP_M, AP_L, detections}]}
    val_ground_truth.json   the validation annotations (COCO format)
    detections/<run>.json.gz  each run's detections (COCO results format, gzipped)
    runs/<run>.json         each run's whole recipe, all twelve COCO numbers, losses, times
    detection.md, detection.png, detection_examples.png  table, chart, detections drawn

A run's name ends with a digest of its whole recipe (data, model, optimisation, budget):
a finished run is reused only when its recorded recipe equals the current one, so a
changed recipe never reuses an old run. Re-evaluate a run with pycocotools alone:

    COCO("val_ground_truth.json").loadRes(json.load(gzip.open("detections/<run>.json.gz")))
"""

import argparse
import dataclasses
import datetime
import functools
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

from lip_jax.data import detection_shapes
from lip_jax.detection import coco
from lip_jax.detection import train as detection_train
from lip_jax.detection.model import FasterRCNN
from lip_jax.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_pooling import machine, versions  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_POOLS, ROI_POOLS = ("strided", "lip"), ("align", "lip")
REPORTED = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")  # detection.json's metrics
LOG_EVERY = 250  # steps


def recipe(args) -> dict:
    """Everything that decides a run but its two poolings and seed: data, model (every
    field of the detector), optimisation and budget."""
    data = {name: getattr(detection_shapes, name) for name in (
        "IMAGE_SIZE", "SPLITS", "OBJECTS", "OBJECT_SIZE", "MAX_ANGLE", "CONTRAST",
        "DISTRACTORS", "PLACEMENT_TRIES", "MEAN", "STD")}
    detector = {f.name: getattr(make_model(args, "strided", "align"), f.name)
                for f in dataclasses.fields(FasterRCNN)
                if f.name not in ("backbone", "roi_pool", "parent", "name")}
    return json.loads(json.dumps(dict(
        dataset=dict(data, dataset_seed=0, train_images=args.train_images,
                     val_images=args.val_images),
        backbone=dict(model="resnet18", width=args.width, logit_width=2 * args.width,
                      stage_sizes=[1, 1, 1, 1], zero_init_residual=True),
        detector=detector,
        optimizer=dict(name="sgd, momentum 0.9, warmup + cosine", batch_size=args.batch_size,
                       steps=args.steps, learning_rate=args.learning_rate,
                       warmup_steps=args.warmup_steps, weight_decay=1e-4, clip_norm=10.0))))


def make_model(args, backbone_pool: str, roi_pool: str) -> FasterRCNN:
    backbone = create_model("resnet18", pool=backbone_pool, features_only=True,
                            width=args.width, logit_width=2 * args.width,
                            stage_sizes=(1, 1, 1, 1), zero_init_residual=True)
    return FasterRCNN(backbone, num_classes=len(detection_shapes.CLASSES), roi_pool=roi_pool,
                      features=args.features, roi_levels=tuple(args.roi_levels))


def run_name(backbone_pool, roi_pool, seed, digest) -> str:
    return f"{backbone_pool}-{roi_pool}-s{seed}-{digest}"


def train_and_evaluate(args, backbone_pool, roi_pool, seed, train, val, gt):
    """Trains one configuration from `seed` (initialisation, batch order, sampling) and
    evaluates it: (run record without names, COCO results)."""
    model = make_model(args, backbone_pool, roi_pool)
    tx, _ = detection_train.make_optimizer(args.learning_rate, args.steps, args.warmup_steps)
    kw = dict(model=model, mean=detection_shapes.MEAN, std=detection_shapes.STD)
    start, cpu_start = time.time(), time.process_time()
    n, size = len(train["image"]), args.batch_size
    order = np.random.default_rng(seed)
    indices = np.concatenate([order.permutation(n) for _ in range(-(-args.steps * size // n))])
    batch = lambda s: {k: v[indices[s * size:(s + 1) * size]] for k, v in train.items()}
    state = jax.jit(functools.partial(detection_train.init_state, tx=tx, **kw))(
        jax.random.key(seed), batch(0))
    step = jax.jit(functools.partial(detection_train.train_step, tx=tx, **kw),
                   donate_argnums=0)
    sample_key, losses, window = jax.random.key(seed + 10_000), [], []
    for s in range(args.steps):
        state, metrics = step(state, batch(s), jax.random.fold_in(sample_key, s))
        window.append(metrics)
        if (s + 1) % LOG_EVERY == 0 or s + 1 == args.steps:
            window = jax.device_get(window)
            mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            if not np.isfinite(mean["loss"]):
                raise FloatingPointError(f"non-finite loss at step {s + 1}: {mean}")
            losses.append(dict(step=s + 1, **{k: round(v, 4) for k, v in mean.items()}))
            window = []
            print(f"  {backbone_pool}/{roi_pool} seed {seed} step {s + 1}: loss "
                  f"{mean['loss']:.3f} ({time.time() - start:.0f} s)", flush=True)
    train_cpu = time.process_time() - cpu_start
    detect = jax.jit(functools.partial(detection_train.detect, **kw))
    results = []
    for i in range(0, len(val["image"]), 50):
        out = jax.device_get(detect(state, val["image"][i:i + 50]))
        results += coco.to_results(np.arange(i, i + len(out["boxes"])), out["boxes"],
                                   out["scores"], out["labels"], out["valid"])
    metrics = coco.evaluate(gt, results)
    return dict(metrics=metrics, losses=losses, train_cpu_s=round(train_cpu, 1),
                cpu_s=round(time.process_time() - cpu_start, 1),
                wall_s=round(time.time() - start, 1)), results


def summarize(runs) -> list[dict]:
    """Mean and sample standard deviation over seeds of every metric, per configuration."""
    rows = []
    for bp in BACKBONE_POOLS:
        for rp in ROI_POOLS:
            rs = [r for r in runs if (r["backbone_pool"], r["roi_pool"]) == (bp, rp)]
            if not rs:
                continue
            row = dict(backbone_pool=bp, roi_pool=rp, seeds=len(rs),
                       cpu_s=float(np.mean([r["cpu_s"] for r in rs])))
            for name in coco.METRICS:
                v = np.array([r["metrics"][name] for r in rs])
                row[name] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None]
            rows.append(row)
    return rows


def markdown(rows) -> str:
    pm = lambda m: f"{100 * m[0]:.1f} ± {100 * m[1]:.1f}" if m[1] is not None else \
        f"{100 * m[0]:.1f}"
    lines = ["| backbone pool | RoI pool | AP | AP50 | AP75 | AP_S | AP_M | seeds | CPU min/run"
             " |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone_pool']} | {r['roi_pool']} | " + " | ".join(
            pm(r[k]) for k in ("AP", "AP50", "AP75", "AP_S", "AP_M"))
            + f" | {r['seeds']} | {r['cpu_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def paired_markdown(runs, metrics=("AP", "AP50", "AP_S", "AP_M")) -> str:
    """Per configuration, the difference to strided/align of the same seed (same data
    order and samples), mean ± std over seeds, and on how many seeds it is positive."""
    base = {r["seed"]: r["metrics"] for r in runs
            if (r["backbone_pool"], r["roi_pool"]) == ("strided", "align")}
    lines = ["| backbone pool | RoI pool | " + " | ".join(f"Δ{m}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for bp in BACKBONE_POOLS:
        for rp in ROI_POOLS:
            rs = [r for r in runs if (r["backbone_pool"], r["roi_pool"]) == (bp, rp)
                  and r["seed"] in base and (bp, rp) != ("strided", "align")]
            if not rs:
                continue
            cells = []
            for m in metrics:
                d = 100 * np.array([r["metrics"][m] - base[r["seed"]][m] for r in rs])
                spread = f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""
                cells.append(f"{d.mean():+.1f}{spread} ({(d > 0).sum()}/{len(d)} up)")
            lines.append(f"| {bp} | {rp} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows, runs, path: Path) -> None:
    """AP, AP50, AP_S, AP_M per configuration: bars at the mean over seeds, a black tick per
    seed."""
    metrics, colors = ("AP", "AP50", "AP_S", "AP_M"), ("#1f77b4", "#9ecae1", "#d62728",
                                                        "#fc9272")
    w, h, top, bottom, left = 720, 360, 40, 70, 50
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    y = lambda v: top + (1 - v) * (h - top - bottom)
    draw.text((left, 10), "detection_shapes validation, COCO metrics x 100: mean over seeds "
              "(bars), each seed (ticks)", fill="black")
    for tick in np.linspace(0, 1, 6):
        draw.line((left - 4, y(tick), w - 10, y(tick)), fill="#dddddd")
        draw.text((left - 30, y(tick) - 6), f"{100 * tick:.0f}", fill="black")
    group = (w - left - 10) / len(metrics)
    bar = (group - 20) / len(rows)
    for g, name in enumerate(metrics):
        x0 = left + g * group + 10
        draw.text((x0 + group / 2 - 20, h - bottom + 8), name, fill="black")
        for i, r in enumerate(rows):
            a = x0 + i * bar
            draw.rectangle((a + 2, y(r[name][0]), a + bar - 2, y(0)), fill=colors[i % 4])
            for run in runs:
                if run["backbone_pool"] == r["backbone_pool"] and run["roi_pool"] == r[
                        "roi_pool"]:
                    v = run["metrics"][name]
                    draw.line((a + bar / 2 - 5, y(v), a + bar / 2 + 5, y(v)), fill="black",
                              width=2)
    for i, r in enumerate(rows):
        x = left + i * 170
        draw.rectangle((x, h - 30, x + 12, h - 18), fill=colors[i % 4])
        draw.text((x + 16, h - 30), f"backbone {r['backbone_pool']}, RoI {r['roi_pool']}",
                  fill="black")
    image.save(path)


def examples_figure(val, results, path: Path, images: int = 6, min_score: float = 0.5,
                    scale: int = 2) -> None:
    """The first validation images with ground truth (green) and one run's detections
    scoring at least `min_score` (red, with class and score)."""
    tile, images = detection_shapes.IMAGE_SIZE * scale, min(images, len(val["image"]))
    image = Image.new("RGB", (images * (tile + 4), tile + 4), "white")
    draw = ImageDraw.Draw(image)
    for i in range(images):
        ox = i * (tile + 4) + 2
        grey = Image.fromarray(val["image"][i, :, :, 0]).resize((tile, tile), Image.NEAREST)
        image.paste(grey.convert("RGB"), (ox, 2))
        for (x1, y1, x2, y2), label in zip(val["boxes"][i], val["labels"][i]):
            if label:
                draw.rectangle((ox + scale * x1, 2 + scale * y1, ox + scale * x2 - 1,
                                2 + scale * y2 - 1), outline="#00ff00")
        for r in results:
            if r["image_id"] == i and r["score"] >= min_score:
                x, y_, bw, bh = (scale * t for t in r["bbox"])
                draw.rectangle((ox + x, 2 + y_, ox + x + bw - 1, 2 + y_ + bh - 1),
                               outline="#ff3030")
                name = detection_shapes.CLASSES[r["category_id"] - 1]
                draw.text((ox + x + 1, 2 + y_ + 1), f"{name} {r['score']:.2f}", fill="#ff3030")
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone-pools", nargs="+", default=list(BACKBONE_POOLS),
                        choices=BACKBONE_POOLS)
    parser.add_argument("--roi-pools", nargs="+", default=list(ROI_POOLS), choices=ROI_POOLS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=16, help="backbone stem channels")
    parser.add_argument("--features", type=int, default=32, help="FPN channels")
    parser.add_argument("--roi-levels", nargs="+", type=int, default=[2],
                        help="pyramid levels RoIs are pooled from (FPN's rule picks one)")
    parser.add_argument("--train-images", type=int,
                        default=detection_shapes.SPLITS["train"][1])
    parser.add_argument("--val-images", type=int, default=detection_shapes.SPLITS["val"][1])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" /
                        "detection")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "detect_small_objects",
                        help="JAX's persistent compilation cache (shared by the seeds)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "train_images", "val_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} must lie in [0, --steps)")
    jax.config.update("jax_compilation_cache_dir", str(args.workdir / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    the_recipe = recipe(args)
    digest = hashlib.sha256(json.dumps(the_recipe, sort_keys=True).encode()).hexdigest()[:10]
    for sub in ("runs", "detections"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    grid = [(bp, rp, s) for s in args.seeds for bp in args.backbone_pools
            for rp in args.roi_pools]
    cpu_start, data = time.process_time(), None
    gt = detection_shapes.coco_ground_truth("val", count=args.val_images)
    (args.out / "val_ground_truth.json").write_text(json.dumps(gt, separators=(",", ":")))
    runs = []
    for i, (bp, rp, seed) in enumerate(grid):
        name = run_name(bp, rp, seed, digest)
        path = args.out / "runs" / f"{name}.json"
        if path.exists() and json.loads(path.read_text())["recipe"] == the_recipe:
            runs.append(json.loads(path.read_text()))
            print(f"[{i + 1}/{len(grid)}] {name}: finished earlier, reused", flush=True)
            continue
        if data is None:
            data = (detection_shapes.load("train", count=args.train_images),
                    detection_shapes.load("val", count=args.val_images))
            print(f"data generated: {time.process_time() - cpu_start:.0f} CPU s", flush=True)
        record, results = train_and_evaluate(args, bp, rp, seed, *data, gt)
        detections = f"detections/{name}.json.gz"
        with gzip.open(args.out / detections, "wt") as f:
            json.dump(results, f, separators=(",", ":"))
        run = dict(name=name, backbone_pool=bp, roi_pool=rp, seed=seed, recipe=the_recipe,
                   detections=detections, **record)
        path.write_text(json.dumps(run, indent=1))
        runs.append(run)
        print(f"[{i + 1}/{len(grid)}] {name}: AP {record['metrics']['AP']:.3f} AP50 "
              f"{record['metrics']['AP50']:.3f}, {record['cpu_s']:.0f} CPU s, "
              f"{record['wall_s']:.0f} s", flush=True)
    report = {"ground_truth": "val_ground_truth.json", "runs": [
        dict(backbone_pool=r["backbone_pool"], roi_pool=r["roi_pool"], seed=r["seed"],
             steps=the_recipe["optimizer"]["steps"],
             **{k: r["metrics"][k] for k in REPORTED}, detections=r["detections"])
        for r in runs]}
    (args.out / "detection.json").write_text(json.dumps(report, indent=1))
    rows = summarize(runs)
    command = " ".join(["python", "experiments/detect_small_objects.py",
                        *(sys.argv[1:] if argv is None else argv)])
    (args.out / "detection.md").write_text(
        f"# Detection on small objects\n\n`{command}` on {machine()}, "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"{json.dumps(versions())}.\n\nCOCO metrics x 100 on {args.val_images} validation "
        f"images, mean ± std over seeds; recipe digest {digest} (runs/*.json hold it).\n\n"
        + markdown(rows) + "\nDifference to strided/align with the same seed, points "
        "(mean ± std over seeds; seeds on which it is positive):\n\n" + paired_markdown(runs))
    bar_chart(rows, runs, args.out / "detection.png")
    best = max(runs, key=lambda r: r["metrics"]["AP50"])
    with gzip.open(args.out / best["detections"], "rt") as f:
        examples_figure(detection_shapes.load("val", count=args.val_images), json.load(f),
                        args.out / "detection_examples.png")
    print(markdown(rows))
    print(paired_markdown(runs))
    print(f"best run {best['name']}: AP50 {best['metrics']['AP50']:.3f}; "
          f"CPU {time.process_time() - cpu_start:.0f} s in this process")


if __name__ == "__main__":
    main()
