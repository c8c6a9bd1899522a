"""Benchmark: lip_pool (XLA graph, Pallas kernels) against the naive formula, avg_pool,
an elementwise copy and PyTorch's official formulation.

    python experiments/bench_pooling.py [--shapes 32,56,56,256 128,28,28,32] [--reps 7]
        [--inner 1] [--pallas] [--out experiments/results/bench_pooling.json]

Times forward and forward+backward (gradients of inputs and logits) of k3/s2/p1 pooling
at each NHWC shape, float32 and bfloat16: median over `--reps` of the mean of `--inner`
back-to-back calls, after a warm-up, all in one process so that ratios are comparable.
The Pallas kernels run where they compile (GPU), or in interpret mode with `--pallas`.
PyTorch runs on CUDA when JAX runs on a GPU and torch sees one.

Each row also gives the bytes a fused kernel must move at least (forward: read x and
logits, write y and the float32 window log-sum-exp; backward: read g, y, lse, x, logits,
write dx and dlogits) and that traffic over the measured time as a fraction of the
memory bandwidth measured by the `x * 1.5` row (read + write). Prints a table; writes
JSON (device and versions included).
"""

import argparse
import functools
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


def lip_xla(x, logits):
    return ops.lip_pool(x, logits, (3, 3), (2, 2), PADS, implementation="xla")


def lip_pallas(x, logits):
    return ops.lip_pool(x, logits, (3, 3), (2, 2), PADS, implementation="pallas")


def avg_pool(x, _):
    return nn.avg_pool(x, (3, 3), (2, 2), PADS)


def elementwise(x, _):
    return x * 1.5


def _median_ms(fn, reps, inner, sync):
    """Median over `reps` of the mean time of `inner` calls of `fn`, then `sync()`."""
    sync(fn())  # compile and warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            out = fn()
        sync(out)
        times.append((time.perf_counter() - start) / inner)
    return 1e3 * statistics.median(times)


def time_jax(pool, x, logits, reps, inner):
    forward = jax.jit(pool)
    cot = jax.random.normal(jax.random.key(1), forward(x, logits).shape, x.dtype)
    grads = jax.jit(lambda x, l, g: jax.vjp(pool, x, l)[1](g))  # g an argument: no folding
    return (_median_ms(lambda: forward(x, logits), reps, inner, jax.block_until_ready),
            _median_ms(lambda: grads(x, logits, cot), reps, inner, jax.block_until_ready))


def time_torch(x, logits, reps, inner, channels_last, device):
    import torch
    import torch.nn.functional as F

    dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[x.dtype.type]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    as_torch = lambda a: torch.tensor(np.asarray(a, np.float32).transpose(0, 3, 1, 2)).to(
        device, dtype).contiguous(memory_format=fmt).requires_grad_()
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
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

    return _median_ms(forward, reps, inner, sync), _median_ms(backward, reps, inner, sync)


def fused_bytes(shape, itemsize):
    """Fewest bytes a fused k3/s2/p1 LIP moves: (forward, forward + backward)."""
    n, h, w, c = shape
    big, small = n * h * w * c, n * ((h - 1) // 2 + 1) * ((w - 1) // 2 + 1) * c
    forward = 2 * big * itemsize + small * (itemsize + 4)  # x, l in; y, lse out
    backward = (2 * small * itemsize + small * 4  # g, y, lse
                + 2 * big * itemsize + 2 * big * itemsize)  # x, l in; dx, dl out
    return forward, forward + backward


def run(shapes, reps, inner, with_pallas, torch_device, peak_gbps):
    rows = []
    for shape in shapes:
        k1, k2 = jax.random.split(jax.random.key(0))
        for dtype in (jnp.float32, jnp.bfloat16):
            x = jax.random.normal(k1, shape, dtype)
            logits = ops.soft_gate(jax.random.normal(k2, shape)).astype(dtype)
            timed = lambda pool: lambda: time_jax(pool, x, logits, reps, inner)
            impls = {"lip_pool": timed(lip_xla)}
            if with_pallas:
                impls["lip_pool pallas"] = timed(lip_pallas)
            impls |= {"naive JAX": timed(naive_lip), "flax avg_pool": timed(avg_pool),
                      "x * 1.5": timed(elementwise)}
            if torch_device:
                for layout, last in (("NCHW", False), ("channels_last", True)):
                    impls[f"torch {layout}"] = functools.partial(
                        time_torch, x, logits, reps, inner, last, torch_device)
            copy_bytes = 2 * x.size * x.dtype.itemsize
            ideal = fused_bytes(shape, x.dtype.itemsize)
            for name, measure in impls.items():
                fwd, fwd_bwd = measure()
                rows.append(dict(shape=list(shape), dtype=jnp.dtype(dtype).name, impl=name,
                                 forward_ms=fwd, forward_backward_ms=fwd_bwd,
                                 fused_bytes=dict(forward=ideal[0], forward_backward=ideal[1])))
                print(f"{str(tuple(shape)):>20} {jnp.dtype(dtype).name:>8} {name:>20} "
                      f"{fwd:10.3f} {fwd_bwd:12.3f}", flush=True)
            copy_ms = next(r["forward_ms"] for r in rows[-len(impls):] if r["impl"] == "x * 1.5")
            copy_gbps = copy_bytes / copy_ms / 1e6
            for row in rows[-len(impls):]:
                row["copy_GBps"] = copy_gbps
                for key, gbps in (("roofline_fraction", copy_gbps),
                                  ("nominal_roofline_fraction", peak_gbps)):
                    if gbps:
                        row[key] = {p: b / row[f"{p}_ms"] / 1e6 / gbps
                                    for p, b in row["fused_bytes"].items()}
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


def roofline_table(rows):
    """Fused LIP traffic over time, in % of the measured copy and the nominal bandwidth."""
    print(f"{'shape':>20} {'dtype':>8} {'impl':>20} {'fwd % copy':>10} {'f+b % copy':>10} "
          f"{'fwd % peak':>10} {'f+b % peak':>10}")
    for r in rows:
        f, p = r["roofline_fraction"], r.get("nominal_roofline_fraction")
        peak = (f"{100 * p['forward']:10.1f} {100 * p['forward_backward']:10.1f}" if p
                else "")
        print(f"{str(tuple(r['shape'])):>20} {r['dtype']:>8} {r['impl']:>20} "
              f"{100 * f['forward']:10.1f} {100 * f['forward_backward']:10.1f} {peak}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32,56,56,256", "128,28,28,32"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--inner", type=int, default=1)
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="the device's nominal memory bandwidth, for a second fraction")
    parser.add_argument("--pallas", action="store_true",
                        help="also time the Pallas kernels off GPU (interpret mode: slow)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_pooling.json")
    parser.add_argument("--pallas-tiles", default=None,
                        help="BLOCK_W,MAX_BLOCK_C,NUM_WARPS of lip_jax.pallas_lip")
    args = parser.parse_args(argv)
    if args.pallas_tiles:
        from lip_jax import pallas_lip  # noqa: PLC0415
        pallas_lip.BLOCK_W, pallas_lip.MAX_BLOCK_C, pallas_lip.NUM_WARPS = (
            int(v) for v in args.pallas_tiles.split(","))
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    on_gpu = jax.default_backend() == "gpu"
    try:
        import torch
        torch_device = None if args.no_torch else (
            "cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    except ImportError:
        torch, torch_device = None, None
    print(f"{'shape':>20} {'dtype':>8} {'impl':>20} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    rows = run(shapes, args.reps, args.inner, on_gpu or args.pallas, torch_device,
               args.peak_gbps)
    roofline_table(rows)
    result = dict(
        device=str(jax.devices()[0].device_kind), platform=platform.platform(),
        processor=platform.processor(), cpu_count=__import__("os").cpu_count(),
        versions=dict(jax=jax.__version__, flax=flax.__version__,
                      torch=torch.__version__ if torch_device else None),
        torch_device=torch_device, peak_gbps=args.peak_gbps, window="k3 s2 p1",
        reps=args.reps, inner=args.inner, pallas_tiles=args.pallas_tiles, rows=rows,
        ratios=ratios(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
