"""Pooling against pooling: one small ResNet, one recipe, only the downsampling swapped.

    python experiments/compare_pooling.py [--datasets ...] [--seeds 0 1 2] [--pools ...]

Trains `resnet18` narrowed to `--width` channels and three stages (stem, 3 basic blocks)
with every `pool=` choice, plus LIP with a global LIP head (`global_pool="lip"`), on each
dataset and seed, through the library's own loop (`lip_jax.train.loop.train_and_evaluate`:
same data order per seed, same recipe: Nesterov SGD, cosine after a linear warmup over the
first `WARMUP` of the budget, batch 64). Every run writes
`OUT/compare_pooling_runs/<run>.json` when it finishes and keeps its checkpoints in
`WORKDIR/<run>`, `<run>` naming dataset, pooling and seed and ending in a hash of the whole
recipe (every config field that changes what a run computes): run the command again and
finished runs are skipped, an interrupted one resumes; another recipe (`--width`,
`--max-steps`, ...) makes runs of its own. Compiled steps are shared across seeds through
JAX's persistent compilation cache in `WORKDIR/xla_cache`. Then it times the train step of
every configuration in interleaved rounds on one batch (`--timing-steps`) and writes
`OUT/compare_pooling.{json,md,png}` (every run; mean and standard deviation over seeds,
parameters, step time relative to strided; a bar chart with error bars) and
`OUT/compare_pooling_importance_<dataset>.png` (the importance maps of the seed-0 LIP model,
and on small_objects the share of importance inside the object's box).
"""

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from lip_jax import data
from lip_jax.data import small_objects
from lip_jax.importance import importance_maps
from lip_jax.models import create_model
from lip_jax.train.config import DEFAULTS, KIND, as_json, check_config, default_config
from lip_jax.train.loop import Trainer, latest_state, train_and_evaluate
from lip_jax.train.steps import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from show_importance import FONT_SIZE, PAD, figure  # noqa: E402  (a sibling script)

POOLS = ("strided", "lip", "avg", "max", "soft", "blur", "dpp")
EPOCHS = {"fashion_mnist": 1.0, "small_objects": 4.0}  # the training budget per dataset
WARMUP = 0.1  # share of the budget spent warming the rate up from 0 (LIP's first gradient
# norms are 24-29: without it a run's outcome hung on its first steps)
ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("lip_jax")


def grid(pools, datasets, seeds):
    """(dataset, pool, global_pool, seed) in run order: seed-major, so that the runs of one
    seed, whose step times are compared, run close together."""
    configs = [(p, "avg") for p in pools] + ([("lip", "lip")] if "lip" in pools else [])
    return [(d, p, g, s) for s in seeds for d in datasets for p, g in configs]


def recipe(config) -> dict:
    """The fields that change what a run computes (kind "math") where they differ from
    the defaults: a run's identity."""
    values, defaults = as_json(config), json.loads(json.dumps(DEFAULTS))
    return {k: v for k, v in values.items() if KIND[k] == "math" and v != defaults[k]}


def run_name(config) -> str:
    """`<dataset>-<pool>-<global pool>-s<seed>-<hash of the recipe>`."""
    kw = config.model_kwargs
    digest = hashlib.sha256(json.dumps(recipe(config), sort_keys=True).encode()).hexdigest()
    return f"{config.dataset}-{kw.pool}-{kw.global_pool}-s{config.seed}-{digest[:8]}"


def make_config(args, dataset, pool, global_pool, seed):
    config = default_config()
    config.update(dict(
        model="resnet18", dataset=dataset, seed=seed, batch_size=64, eval_batch_size=100,
        num_epochs=EPOCHS[dataset], warmup_epochs=WARMUP * EPOCHS[dataset],
        max_steps=args.max_steps, log_every_steps=25,
        eval_every_epochs=1e3, checkpoint_every_secs=60.0, keep_checkpoints=1,
        num_threads=2, data_dir=args.data_dir if dataset == "fashion_mnist" else ""))
    config.model_kwargs.update(dict(
        pool=pool, global_pool=global_pool, width=args.width, logit_width=2 * args.width,
        stage_sizes=(1, 1, 1), zero_init_residual=True))
    check_config(config)
    return config


def count_params(config) -> int:
    model = create_model(config.model, num_classes=data.info(config.dataset).num_classes,
                         **config.model_kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, *data.image_shape(config))))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def step_time(workdir: Path, batch_size: int) -> float:
    """Median seconds per train step from the loop's logged rates (the first interval,
    which includes compilation, left out when there are others)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
    return batch_size / float(np.median(rates[1:] or rates))


def train_one(args, key, runs_dir):
    dataset, pool, global_pool, seed = key
    config = make_config(args, *key)
    name = run_name(config)
    workdir = args.workdir / name
    start = time.time()
    result = train_and_evaluate(config, workdir)
    run = dict(pool=pool, global_pool=global_pool, dataset=dataset, seed=seed,
               test_accuracy=float(result["eval_top1"]), test_loss=float(result["eval_loss"]),
               params=count_params(config), steps=result["step"],
               step_time_s=step_time(workdir, config.batch_size),
               wall_time_s=round(time.time() - start, 1), workdir=str(workdir),
               recipe=recipe(config))
    (runs_dir / f"{name}.json").write_text(json.dumps(run, indent=1))
    return run


def time_steps(args, configs, steps: int, rounds: int = 3) -> dict:
    """Median seconds per train step of each `(dataset, pool, global_pool)`, on one fixed
    batch, measured in interleaved rounds so that other load on a shared machine falls on
    every configuration alike (the compiled steps come from the persistent cache)."""
    setups = {}
    for key in configs:
        trainer = Trainer(make_config(args, *key, seed=0))
        batch = trainer.global_batch(next(trainer.input.train_batches(0, 0, 1)))
        setups[key] = [trainer, trainer.init_state(), batch]
    times = {key: [] for key in configs}
    for _ in range(rounds):
        for key, setup in setups.items():
            trainer, state, batch = setup
            state, metrics = trainer.train_step(state, batch)  # warm
            jax.block_until_ready(metrics)
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
            times[key].append((time.perf_counter() - start) / steps)
            setup[1] = state
    return {key: float(np.median(t)) for key, t in times.items()}


def summarize(runs, step_times):
    """Per (dataset, pool, global_pool): accuracy mean/std over seeds, parameters, and the
    timed train step relative to strided on the same dataset (also set on each run)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["pool"], r["global_pool"]), []).append(r)
    rows = []
    for (dataset, pool, global_pool), rs in groups.items():
        ratio = step_times[dataset, pool, global_pool] / step_times.get(
            (dataset, "strided", "avg"), float("nan"))
        for r in rs:
            r["step_time_ratio"] = ratio
        acc = np.array([r["test_accuracy"] for r in rs])
        rows.append(dict(dataset=dataset, pool=pool, global_pool=global_pool, seeds=len(rs),
                         mean=float(acc.mean()), std=float(acc.std(ddof=1)) if len(rs) > 1
                         else float("nan"), params=rs[0]["params"],
                         timed_step_s=step_times[dataset, pool, global_pool],
                         step_time_ratio=ratio))
    return rows


def markdown(rows) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == dataset]
        base = next((r for r in rs if r["pool"] == "strided"), None)
        lines += [f"### {dataset}", "",
                  "| pool | global pool | test accuracy % (mean ± std) | seeds | vs strided "
                  "(points, ± SE) | params | train-step time / strided |",
                  "|---|---|---|---|---|---|---|"]
        for r in rs:
            delta = "" if base is None or r is base else (
                f"{100 * (r['mean'] - base['mean']):+.2f} ± "
                f"{100 * np.sqrt(r['std']**2 / r['seeds'] + base['std']**2 / base['seeds']):.2f}")
            lines.append(f"| {r['pool']} | {r['global_pool']} | {100 * r['mean']:.2f} ± "
                         f"{100 * r['std']:.2f} | {r['seeds']} | {delta} | {r['params']:,} | "
                         f"{r['step_time_ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(rows, path: Path) -> None:
    """One panel per dataset: mean test accuracy per pooling, error bars = std over seeds."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    panel_w, h, top, bottom, left = 480, 330, 40, 80, 50
    image = Image.new("RGB", (panel_w * len(datasets), h), "white")
    draw = ImageDraw.Draw(image)
    for k, dataset in enumerate(datasets):
        rs = [r for r in rows if r["dataset"] == dataset]
        low = min(r["mean"] - np.nan_to_num(r["std"]) for r in rs)
        high = max(r["mean"] + np.nan_to_num(r["std"]) for r in rs)
        lo, hi = np.floor(100 * low - 2) / 100, np.ceil(100 * high + 1) / 100
        x0 = k * panel_w + left
        width = (panel_w - left - 10) / len(rs)
        y = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)
        draw.text((x0, 8), f"{dataset}: test accuracy %, mean and std over seeds "
                  f"(axis from {100 * lo:.0f})", fill="black")
        for tick in np.linspace(lo, hi, 5):
            draw.line((x0 - 4, y(tick), x0, y(tick)), fill="black")
            draw.text((x0 - 46, y(tick) - 6), f"{100 * tick:.1f}", fill="black")
        draw.line((x0, top, x0, h - bottom), fill="black")
        for i, r in enumerate(rs):
            a, b = x0 + i * width + 4, x0 + (i + 1) * width - 4
            color = ("#8c1c13" if r["global_pool"] == "lip" else
                     "#d62728" if r["pool"] == "lip" else "#1f77b4")
            draw.rectangle((a, y(r["mean"]), b, h - bottom), fill=color)
            if np.isfinite(r["std"]):
                mid = (a + b) / 2
                draw.line((mid, y(r["mean"] - r["std"]), mid, y(r["mean"] + r["std"])),
                          fill="black", width=2)
                for v in (r["mean"] - r["std"], r["mean"] + r["std"]):
                    draw.line((mid - 5, y(v), mid + 5, y(v)), fill="black", width=2)
            label = r["pool"] if r["global_pool"] == "avg" else f"{r['pool']}+g{r['global_pool']}"
            draw.text((a, h - bottom + 6 + 12 * (i % 2)), label, fill="black")
    draw.text((left, h - 18), "red: LIP; dark red: LIP with a global LIP head (lip+glip); "
              "error bars: standard deviation over seeds", fill="black")
    image.save(path)


def importance_figure(args, dataset, out: Path, num_images=6) -> dict:
    """Draws the importance maps of the seed-0 LIP model over test images (objects boxed
    in green on small_objects) with `show_importance.figure`; returns, per LIP layer, the
    mean share of importance inside the object's box and the box's mean share of the image
    area (small_objects only)."""
    config = make_config(args, dataset, "lip", "avg", args.seeds[0])
    trainer, state = latest_state(config, args.workdir / run_name(config))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    measured, shown = {}, None
    for n, batch in enumerate(trainer.input.eval_batches(500, 0, 1)):
        images = batch["image"]
        maps = jax.device_get(importance_maps(
            trainer.model, variables, normalize(images, trainer.info.mean, trainer.info.std)))
        maps = dict(sorted(maps.items(), key=lambda item: -item[1].shape[1]))  # input first
        if shown is None:
            shown = images[:num_images], {k: m[:num_images] for k, m in maps.items()}
        if dataset == "small_objects":
            test = small_objects.load("test")  # eval batches run through it in order
            boxes = [test[min(n * 500 + i, len(test) - 1)]["box"] for i in range(len(images))]
            inside = np.zeros(images.shape[:3], bool)
            for i, (y0, x0, y1, x1) in enumerate(boxes):
                inside[i, y0:y1, x0:x1] = True
            mask = batch["mask"] > 0
            for layer, m in maps.items():
                up = images.shape[1] // m.shape[1]
                mass = np.kron(m, np.ones((1, up, up)))
                share = (mass * inside).sum((1, 2)) / mass.sum((1, 2))
                measured.setdefault(layer, []).extend(share[mask])
            measured.setdefault("_area", []).extend(inside.mean((1, 2))[mask])
    images, maps = shown
    scale = max(2, 192 // images.shape[1])
    image = figure(np.asarray(images, np.float64), maps, scale, "image")
    if dataset == "small_objects":
        _draw_boxes(image, small_objects.load("test")[:num_images], scale, 1 + len(maps))
    image.save(out)
    area = float(np.mean(measured.pop("_area"))) if measured else None
    return {"layers": list(maps), "box_area_share": area,
            "importance_in_box": {k: float(np.mean(v)) for k, v in measured.items()}}


def _draw_boxes(image, examples, scale, columns):
    """Outlines each example's object box in every tile of its row of a
    `show_importance.figure`, in place."""
    draw = ImageDraw.Draw(image)
    tile = small_objects.IMAGE_SIZE * scale + 2 * PAD
    top = 2 * FONT_SIZE + 3 * PAD  # the figure's title strip
    for i, e in enumerate(examples):
        y0, x0, y1, x1 = (int(v) * scale for v in e["box"])
        for j in range(columns):
            ox, oy = j * tile + PAD, top + i * tile + PAD
            draw.rectangle((ox + x0 - 1, oy + y0 - 1, ox + x1, oy + y1), outline="#00ff00")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    flags = f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""
    return (f"{cpu}, {os.cpu_count()} cores, {jax.device_count()} "
            f"{jax.devices()[0].platform} device(s){flags}")


def versions() -> dict:
    import flax
    import optax
    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion_mnist", "small_objects"],
                        choices=sorted(EPOCHS))
    parser.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=16, help="stem channels (LIP trunk: 2x)")
    parser.add_argument("--max-steps", type=int, default=-1, help="> 0: cap (smoke tests)")
    parser.add_argument("--timing-steps", type=int, default=20,
                        help="train steps per configuration and round in the timing pass")
    parser.add_argument("--data-dir", default="", help="Fashion-MNIST folder (default: "
                        "Debian's dataset-fashion-mnist)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "compare_pooling")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    jax.config.update("jax_compilation_cache_dir", str(args.workdir / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    runs_dir = args.out / "compare_pooling_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    keys = grid(args.pools, args.datasets, args.seeds)
    names = {key: run_name(make_config(args, *key)) for key in keys}
    began, trained, runs = time.time(), 0, []
    for i, key in enumerate(keys):
        path = runs_dir / f"{names[key]}.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
            continue
        run = train_one(args, key, runs_dir)
        runs.append(run)
        trained += 1
        eta = (time.time() - began) / trained * sum(
            not (runs_dir / f"{names[k]}.json").exists() for k in keys)
        print(f"[{i + 1}/{len(keys)}] {names[key]}: test accuracy "
              f"{run['test_accuracy']:.4f}, {run['wall_time_s']:.0f} s; ETA {eta / 60:.0f} min",
              flush=True)
    configs = list(dict.fromkeys((r["dataset"], r["pool"], r["global_pool"]) for r in runs))
    rows = summarize(runs, time_steps(args, configs, args.timing_steps))
    importance = {}
    if "lip" in args.pools:
        for dataset in args.datasets:
            out = args.out / f"compare_pooling_importance_{dataset}.png"
            importance[dataset] = importance_figure(args, dataset, out)
    report = dict(command=" ".join(["python", "experiments/compare_pooling.py", *sys.argv[1:]]
                                   if argv is None else ["compare_pooling.py", *argv]),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  machine=machine(), versions=versions(),
                  recipe=dict(model="resnet18", width=args.width, stage_sizes=[1, 1, 1],
                              batch_size=64, epochs=EPOCHS, warmup_share=WARMUP,
                              max_steps=args.max_steps),
                  summary=rows, importance=importance,
                  runs=[{k: v for k, v in r.items() if k not in ("workdir", "recipe")}
                        for r in runs])
    (args.out / "compare_pooling.json").write_text(json.dumps(report, indent=1))
    table = markdown(rows)
    (args.out / "compare_pooling.md").write_text(
        f"# Pooling comparison\n\n`{report['command']}` on {report['machine']}, "
        f"{report['date']}.\n\n{table}")
    bar_chart(rows, args.out / "compare_pooling.png")
    print(table)
    for dataset, found in importance.items():
        if found["box_area_share"] is not None:
            print(f"{dataset}: box = {100 * found['box_area_share']:.1f}% of the area; share of "
                  "LIP importance inside it: " + ", ".join(
                      f"{k} {100 * v:.1f}%" for k, v in found["importance_in_box"].items()))


if __name__ == "__main__":
    main()
