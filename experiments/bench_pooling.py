"""Benchmark: lip_pool (the XLA graph, with and without the logit bounds (0, 12) that its
logits keep, and each fused kernel) side by side with plain autodiff of the naive
formula, avg_pool, an elementwise copy, PyTorch's official formulation and, optionally,
lip_pool at an earlier commit.

    python experiments/bench_pooling.py [--shapes 32,56,56,256 128,28,28,32] [--reps 7]
        [--inner 1] [--pallas] [--against cad5062]
        [--out experiments/results/bench_pooling.json]

Times forward and forward+backward (gradients of inputs and logits) of k3/s2/p1 pooling
at each NHWC shape, float32 and bfloat16: median over `--reps` rounds of the mean of
`--inner` back-to-back calls, after a warm-up. Each round times every implementation in
turn (interleaved), all in one process, so that ratios are comparable on a shared
machine. The kernels of the running backend ("pallas_gpu" and "pallas_mosaic_gpu" on a
GPU, "pallas_tpu" on a TPU) are timed where they compile; `--pallas` adds all three in
interpret mode (slow).
`--against REF` adds lip_pool from `git show REF:lip_jax/ops.py` (a commit whose ops.py
stands alone, such as cad5062, the last before the per-window rework). PyTorch runs on
CUDA when JAX runs on a GPU and torch sees one.

Each row also gives the bytes an exact fused LIP must move at least (forward: read x and
logits, write y, the window max and the log of the window's weight sum, both float32;
backward: read g, those three, x and logits, write dx and dlogits) and that traffic over
the measured time as a fraction of the memory bandwidth measured by the `x * 1.5` row
(read + write), and of `--peak-gbps`. Prints a table; writes JSON (device and versions
included).
"""

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
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
    """The official formulation as two reduce_window sums, differentiated by autodiff
    (exact only while exp(logits) neither overflows nor underflows)."""
    window = ops.pool_window(x.shape, (3, 3), (2, 2), PADS)
    w = jnp.exp(logits.astype(jnp.float32))
    xf = x.astype(jnp.float32)
    return (ops.window_sum(w * xf, window) / ops.window_sum(w, window)).astype(x.dtype)


def lip(implementation, module=ops, **options):
    if implementation:
        options["implementation"] = implementation
    return lambda x, logits: module.lip_pool(x, logits, (3, 3), (2, 2), PADS, **options)


def ops_at(ref: str):
    """lip_jax/ops.py as of git commit `ref`, as a module (it must import no lip_jax)."""
    source = subprocess.run(["git", "show", f"{ref}:lip_jax/ops.py"], check=True,
                            capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout
    if "from lip_jax" in source or "import lip_jax" in source:
        sys.exit(f"--against {ref}: its lip_jax/ops.py imports other lip_jax modules")
    path = Path(tempfile.mkdtemp()) / f"ops_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def avg_pool(x, _):
    return nn.avg_pool(x, (3, 3), (2, 2), PADS)


def elementwise(x, _):
    return x * 1.5


def _mean_ms(fn, inner, sync):
    """Mean time of `inner` calls of `fn`, then `sync()`, in ms."""
    start = time.perf_counter()
    for _ in range(inner):
        out = fn()
    sync(out)
    return 1e3 * (time.perf_counter() - start) / inner


def interleaved_medians(timers, reps, inner):
    """{name: (forward ms, forward+backward ms)}: each timer is (forward, backward, sync);
    every round times all of them in turn, after one warm-up call each."""
    for forward, backward, sync in timers.values():
        sync(forward()), sync(backward())
    times = {name: ([], []) for name in timers}
    for _ in range(reps):
        for name, (forward, backward, sync) in timers.items():
            times[name][0].append(_mean_ms(forward, inner, sync))
            times[name][1].append(_mean_ms(backward, inner, sync))
    return {name: tuple(map(statistics.median, t)) for name, t in times.items()}


def jax_timer(pool, x, logits):
    forward = jax.jit(pool)
    cot = jax.random.normal(jax.random.key(1), jax.eval_shape(pool, x, logits).shape, x.dtype)
    grads = jax.jit(lambda x, l, g: jax.vjp(pool, x, l)[1](g))  # g an argument: no folding
    return (lambda: forward(x, logits), lambda: grads(x, logits, cot), jax.block_until_ready)


def torch_timer(x, logits, channels_last, device):
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
            return lip2d()

    cot = torch.randn_like(lip2d())

    def backward():
        xt.grad = lt.grad = None
        lip2d().backward(cot)

    return forward, backward, sync


def fused_bytes(shape, itemsize):
    """Fewest bytes an exact fused k3/s2/p1 LIP moves: (forward, forward + backward)."""
    n, h, w, c = shape
    big, small = n * h * w * c, n * ((h - 1) // 2 + 1) * ((w - 1) // 2 + 1) * c
    forward = 2 * big * itemsize + small * itemsize  # x, l in; y out
    residual = 2 * big * itemsize + small * 12  # x, l in; y, top, log_total out (float32)
    backward = (small * itemsize + small * 12  # g, y, top, log_total
                + 2 * big * itemsize + 2 * big * itemsize)  # x, l in; dx, dl out
    return forward, residual + backward


def run(shapes, reps, inner, kernels, torch_device, peak_gbps, against):
    rows = []
    for shape in shapes:
        k1, k2 = jax.random.split(jax.random.key(0))
        for dtype in (jnp.float32, jnp.bfloat16):
            x = jax.random.normal(k1, shape, dtype)
            logits = ops.soft_gate(jax.random.normal(k2, shape)).astype(dtype)
            pools = {"lip_pool xla": lip("xla"),
                     "lip_pool xla (0,12)": lip("xla", logit_bounds=(0, 12))}
            pools |= {f"lip_pool {kernel}": lip(kernel) for kernel in kernels}
            if against:
                pools[f"lip_pool @{against[0]}"] = lip(None, against[1])
            pools |= {"naive autodiff": naive_lip, "flax avg_pool": avg_pool,
                      "x * 1.5": elementwise}
            timers = {name: jax_timer(pool, x, logits) for name, pool in pools.items()}
            if torch_device:
                for layout, last in (("NCHW", False), ("channels_last", True)):
                    timers[f"torch {layout}"] = torch_timer(x, logits, last, torch_device)
            copy_bytes = 2 * x.size * x.dtype.itemsize
            ideal = fused_bytes(shape, x.dtype.itemsize)
            for name, (fwd, fwd_bwd) in interleaved_medians(timers, reps, inner).items():
                rows.append(dict(shape=list(shape), dtype=jnp.dtype(dtype).name, impl=name,
                                 forward_ms=fwd, forward_backward_ms=fwd_bwd,
                                 fused_bytes=dict(forward=ideal[0], forward_backward=ideal[1])))
                print(f"{str(tuple(shape)):>20} {jnp.dtype(dtype).name:>8} {name:>22} "
                      f"{fwd:10.3f} {fwd_bwd:12.3f}", flush=True)
            copy_ms = next(r["forward_ms"] for r in rows[-len(timers):] if r["impl"] == "x * 1.5")
            copy_gbps = copy_bytes / copy_ms / 1e6
            for row in rows[-len(timers):]:
                row["copy_GBps"] = copy_gbps
                for key, gbps in (("roofline_fraction", copy_gbps),
                                  ("nominal_roofline_fraction", peak_gbps)):
                    if gbps:
                        row[key] = {p: b / row[f"{p}_ms"] / 1e6 / gbps
                                    for p, b in row["fused_bytes"].items()}
    return rows


def ratios(rows, default):
    """The default lip_pool's time over each implementation's, per shape, dtype and pass."""
    out = {}
    for row in rows:
        ours = next(r for r in rows if r["impl"] == default and r["shape"] == row["shape"]
                    and r["dtype"] == row["dtype"])
        key = f"{tuple(row['shape'])} {row['dtype']} {default} / {row['impl']}"
        out[key] = {p: ours[p] / row[p] for p in ("forward_ms", "forward_backward_ms")}
    return out


def roofline_table(rows):
    """Fused LIP traffic over time, in % of the measured copy and the nominal bandwidth."""
    print(f"{'shape':>20} {'dtype':>8} {'impl':>22} {'fwd % copy':>10} {'f+b % copy':>10} "
          f"{'fwd % peak':>10} {'f+b % peak':>10}")
    for r in rows:
        f, p = r["roofline_fraction"], r.get("nominal_roofline_fraction")
        peak = (f"{100 * p['forward']:10.1f} {100 * p['forward_backward']:10.1f}" if p
                else "")
        print(f"{str(tuple(r['shape'])):>20} {r['dtype']:>8} {r['impl']:>22} "
              f"{100 * f['forward']:10.1f} {100 * f['forward_backward']:10.1f} {peak}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32,56,56,256", "128,28,28,32"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--inner", type=int, default=1)
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="the device's nominal memory bandwidth, for a second fraction")
    parser.add_argument("--pallas", action="store_true",
                        help="also time every kernel off its backend (interpret mode: slow)")
    parser.add_argument("--against", default=None,
                        help="also time lip_pool at this git commit (e.g. cad5062)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_pooling.json")
    parser.add_argument("--pallas-tiles", default=None,
                        help="BLOCK_W,MAX_BLOCK_C,NUM_WARPS of lip_jax.pallas_gpu")
    args = parser.parse_args(argv)
    if args.pallas_tiles:
        from lip_jax import pallas_gpu  # noqa: PLC0415
        pallas_gpu.BLOCK_W, pallas_gpu.MAX_BLOCK_C, pallas_gpu.NUM_WARPS = (
            int(v) for v in args.pallas_tiles.split(","))
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    backend = jax.default_backend()
    on_gpu = backend == "gpu"
    kernels = (["pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu"] if args.pallas
               else [f"pallas_{backend}"] if backend == "tpu"
               else ["pallas_gpu", "pallas_mosaic_gpu"] if on_gpu else [])
    against = (args.against, ops_at(args.against)) if args.against else None
    try:
        import torch
        torch_device = None if args.no_torch else (
            "cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    except ImportError:
        torch, torch_device = None, None
    print(f"{'shape':>20} {'dtype':>8} {'impl':>22} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    rows = run(shapes, args.reps, args.inner, kernels, torch_device, args.peak_gbps, against)
    default = ops.DEFAULT_IMPLEMENTATION.get(backend, "xla")
    default = f"lip_pool {default if default != 'pallas' else f'pallas_{backend}'}"
    roofline_table(rows)
    result = dict(
        device=str(jax.devices()[0].device_kind), platform=platform.platform(),
        processor=platform.processor(), cpu_count=__import__("os").cpu_count(),
        versions=dict(jax=jax.__version__, flax=flax.__version__,
                      torch=torch.__version__ if torch_device else None),
        torch_device=torch_device, peak_gbps=args.peak_gbps, window="k3 s2 p1",
        reps=args.reps, inner=args.inner, pallas_tiles=args.pallas_tiles, against=args.against,
        default=default, rows=rows, ratios=ratios(rows, default))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
