"""Benchmark: lip_pool against the naive formula, avg_pool, elementwise and PyTorch.

    python experiments/bench_pooling.py [--shapes 32,56,56,256 128,28,28,32] [--reps 7]

Times forward and forward+backward (gradients of inputs and logits) of k3/s2/p1 pooling
at each NHWC shape, float32 and bfloat16, median of `--reps` runs after a warm-up, all in
one process so that ratios are comparable. Prints a table and writes JSON (with device
and versions) to `experiments/results/bench_pooling.json`.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lip_jax import ops

PADS = ((1, 1), (1, 1))


def naive_lip(x, logits):
    """The official formulation as two reduce_window sums, differentiated by autodiff."""
    window = ops.pool_window(x.shape, (3, 3), (2, 2), PADS)
    w = jnp.exp(logits.astype(jnp.float32))
    xf = x.astype(jnp.float32)
    return (ops.window_sum(w * xf, window) / ops.window_sum(w, window)).astype(x.dtype)


def fast_lip(x, logits):
    return ops.lip_pool(x, logits, (3, 3), (2, 2), PADS)


def avg_pool(x, _):
    return nn.avg_pool(x, (3, 3), (2, 2), PADS)


def elementwise(x, _):
    return x * 1.5


def _median_ms(fn, reps):
    fn()  # compile and warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_jax(pool, x, logits, reps):
    forward = jax.jit(pool)
    cot = jax.random.normal(jax.random.key(1), forward(x, logits).shape, x.dtype)
    grads = jax.jit(lambda x, l, g: jax.vjp(pool, x, l)[1](g))  # g an argument: no folding
    return (_median_ms(lambda: forward(x, logits).block_until_ready(), reps),
            _median_ms(lambda: jax.block_until_ready(grads(x, logits, cot)), reps))


def time_torch(x, logits, reps, channels_last):
    import torch
    import torch.nn.functional as F

    dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[x.dtype.type]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    as_torch = lambda a: torch.tensor(np.asarray(a, np.float32).transpose(0, 3, 1, 2)).to(
        dtype).contiguous(memory_format=fmt).requires_grad_()
    xt, lt = as_torch(x), as_torch(logits)

    def lip2d():
        w = lt.exp()
        return F.avg_pool2d(xt * w, 3, 2, 1) / F.avg_pool2d(w, 3, 2, 1)

    def forward():
        with torch.no_grad():
            lip2d()

    cot = torch.randn_like(lip2d())

    def backward():
        xt.grad = lt.grad = None
        lip2d().backward(cot)

    return _median_ms(forward, reps), _median_ms(backward, reps)


def run(shapes, reps, with_torch):
    rows = []
    for shape in shapes:
        k1, k2 = jax.random.split(jax.random.key(0))
        for dtype in (jnp.float32, jnp.bfloat16):
            x = jax.random.normal(k1, shape, dtype)
            logits = ops.soft_gate(jax.random.normal(k2, shape)).astype(dtype)
            impls = {"lip_pool": lambda: time_jax(fast_lip, x, logits, reps),
                     "naive JAX": lambda: time_jax(naive_lip, x, logits, reps),
                     "flax avg_pool": lambda: time_jax(avg_pool, x, logits, reps),
                     "x * 1.5": lambda: time_jax(elementwise, x, logits, reps)}
            if with_torch:
                impls["torch NCHW"] = lambda: time_torch(x, logits, reps, False)
                impls["torch channels_last"] = lambda: time_torch(x, logits, reps, True)
            for name, timed in impls.items():
                fwd, fwd_bwd = timed()
                rows.append(dict(shape=list(shape), dtype=jnp.dtype(dtype).name, impl=name,
                                 forward_ms=fwd, forward_backward_ms=fwd_bwd))
                print(f"{str(tuple(shape)):>20} {jnp.dtype(dtype).name:>8} {name:>20} "
                      f"{fwd:10.2f} {fwd_bwd:12.2f}", flush=True)
    return rows


def ratios(rows):
    """lip_pool's time over each other implementation's, per shape, dtype and pass."""
    out = {}
    for row in rows:
        ours = next(r for r in rows if r["impl"] == "lip_pool" and r["shape"] == row["shape"]
                    and r["dtype"] == row["dtype"])
        key = f"{tuple(row['shape'])} {row['dtype']} lip_pool / {row['impl']}"
        out[key] = {p: ours[p] / row[p] for p in ("forward_ms", "forward_backward_ms")}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32,56,56,256", "128,28,28,32"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_pooling.json")
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    try:
        import torch
        with_torch = not args.no_torch
    except ImportError:
        torch, with_torch = None, False
    print(f"{'shape':>20} {'dtype':>8} {'impl':>20} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    rows = run(shapes, args.reps, with_torch)
    result = dict(
        device=str(jax.devices()[0].device_kind), platform=platform.platform(),
        processor=platform.processor(), cpu_count=__import__("os").cpu_count(),
        versions=dict(jax=jax.__version__, flax=flax.__version__,
                      torch=torch.__version__ if with_torch else None),
        window="k3 s2 p1", reps=args.reps, rows=rows, ratios=ratios(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
