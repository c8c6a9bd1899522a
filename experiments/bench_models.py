"""Benchmark: LIP networks against their baselines, train-step throughput and peak memory.

    python experiments/bench_models.py [--pairs lip_resnet50:resnet50 lip_cnn:cnn]
        [--batch 8] [--size 224] [--reps 3] [--lip-kwargs '{"remat_logits": true}']
        [--implementations xla pallas]

For each (LIP, baseline) pair: images/s of a full train step (forward, backward, SGD
update, BatchNorm statistics) at the same batch and resolution, and XLA's memory analysis
of the compiled step (arguments + temporaries). `lip_cnn:cnn` runs at the default job's
28x28x1 and batch 128 instead. `--implementations` times the LIP model once per
`lip_pool` implementation (set as the backend's default, with and without logit bounds,
while it is traced). Prints a table; writes experiments/results/bench_models.json.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lip_jax import ops
from lip_jax.models import create_model
from lip_jax.train import steps

SMALL = {"lip_cnn", "cnn"}


def measure(name, batch, size, reps, dtype, **model_kw):
    small = name in SMALL
    shape = (128, 28, 28, 1) if small else (batch, size, size, 3)
    model = create_model(name, num_classes=10 if small else 1000, dtype=jnp.dtype(dtype),
                         **model_kw)
    tx = optax.sgd(0.1, momentum=0.9)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape[1:])))
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             opt_state=tx.init(variables["params"]))
    batch_data = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 255, shape),
                                       jnp.uint8),
                  "label": jnp.arange(shape[0]) % (10 if small else 1000)}
    step = jax.jit(lambda s, b: steps.train_step(
        s, b, model=model, tx=tx, schedule=lambda _: 0.1, mean=(120.0,), std=(60.0,),
        num_classes=10 if small else 1000, label_smoothing=0.0), donate_argnums=0)
    compiled = step.lower(state, batch_data).compile()
    memory = compiled.memory_analysis()
    peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes
    state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch_data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return dict(model=name, shape=list(shape), dtype=dtype, step_s=seconds,
                images_per_s=shape[0] / seconds, peak_bytes=peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["lip_cnn:cnn", "lip_resnet50:resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--implementations", nargs="+", default=["xla"],
                        choices=ops.IMPLEMENTATIONS)
    parser.add_argument("--lip-kwargs", type=json.loads, default={},
                        help="JSON create_model arguments for the LIP models")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_models.json")
    parser.add_argument("--pallas-tiles", default=None,
                        help="BLOCK_W,MAX_BLOCK_C,NUM_WARPS of lip_jax.pallas_gpu")
    args = parser.parse_args(argv)
    if args.pallas_tiles:
        from lip_jax import pallas_gpu  # noqa: PLC0415
        pallas_gpu.BLOCK_W, pallas_gpu.MAX_BLOCK_C, pallas_gpu.NUM_WARPS = (
            int(v) for v in args.pallas_tiles.split(","))
    rows, pairs = [], []
    print(f"{'pair':<26} {'impl':>6} {'shape':>18} {'LIP img/s':>10} {'base img/s':>10} "
          f"{'ratio':>6} {'LIP MiB':>8} {'base MiB':>8} {'ratio':>6}")
    backend = jax.default_backend()
    for pair in args.pairs:
        lip, base = pair.split(":")
        b = measure(base, args.batch, args.size, args.reps, args.dtype)
        rows.append(b)
        for impl in args.implementations:
            for defaults in (ops.DEFAULT_IMPLEMENTATION, ops.DEFAULT_BOUNDED_IMPLEMENTATION):
                defaults[backend] = impl
            a = measure(lip, args.batch, args.size, args.reps, args.dtype, **args.lip_kwargs)
            a["implementation"] = impl
            rows.append(a)
            summary = dict(lip=lip, baseline=base, implementation=impl,
                           throughput_ratio=a["images_per_s"] / b["images_per_s"],
                           memory_ratio=a["peak_bytes"] / b["peak_bytes"])
            pairs.append(summary)
            print(f"{pair:<26} {impl:>6} {str(tuple(a['shape'])):>18} {a['images_per_s']:>10.1f} "
                  f"{b['images_per_s']:>10.1f} {summary['throughput_ratio']:>6.2f} "
                  f"{a['peak_bytes'] / 2**20:>8.0f} {b['peak_bytes'] / 2**20:>8.0f} "
                  f"{summary['memory_ratio']:>6.2f}", flush=True)
    result = dict(device=jax.devices()[0].device_kind, platform=platform.platform(),
                  versions=dict(jax=jax.__version__), dtype=args.dtype, reps=args.reps,
                  lip_kwargs=args.lip_kwargs, pallas_tiles=args.pallas_tiles,
                  rows=rows, pairs=pairs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
