"""Diagnostic: what each part of the XLA graph of `lip_pool` costs (k3 s2 p1).

    python experiments/bench_xla_parts.py [--out FILE]

Times, forward and forward+backward, side by side in one run: the default XLA graph
(`lip_jax.lip_xla.lip`: per-image stats, a `lax.cond`, the chosen form), the bounded-logit
path (`logit_bounds`: the fast form alone, no stats, no cond), the stats and cond with the
fast form in both branches, the cond alone, plain autodiff of the fast form, autodiff of
the per-window form, the default graph vmapped over images, the mixed branch, the GPU
kernels (on a GPU) and naive autodiff; and the default graph, the bounded path and naive
autodiff with their logits made in the same jit (`soft_gate` of the input), as in a
network, where the cond's operands must be materialised and the others fuse the gate.
Writes experiments/results/bench_xla_parts.json.
"""

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).parent))
from bench_pooling import PADS, interleaved_medians, jax_timer, lip, naive_lip  # noqa: E402

from lip_jax import lip_xla as X  # noqa: E402
from lip_jax import ops  # noqa: E402


def _window(x):
    return ops.pool_window(x.shape, (3, 3), (2, 2), PADS)


def bounded(x, l):
    return X.lip(x, l, _window(x), bounded=True)


def stats_cond_fast(x, l):
    w = _window(x)
    fast = X._image_stats(l, w, jnp.float32)[1]
    branch = lambda x, l: X._image_lip(x, l, w)
    return lax.cond(jnp.all(fast), branch, branch, x, l)


def cond_fast(x, l):
    """The `lax.cond` alone: its predicate from one logit, the fast form both ways."""
    w = _window(x)
    branch = lambda x, l: X._image_lip(x, l, w)
    return lax.cond(l.ravel()[0] < X.FAST_LOGIT_RANGE, branch, branch, x, l)


def fast_autodiff(x, l):
    w = _window(x)
    xc, lc = X._compute(x, l, w)
    shift = X._image_max(lc, w)
    return X._image_form(xc, lc, shift, w)[0].astype(x.dtype)


def window_autodiff(x, l):
    w = _window(x)
    return X._window_form(*X._compute(x, l, w), w)[0].astype(x.dtype)


def per_example(x, l):
    """The default graph under `vmap`, one image per call (per-example gradients)."""
    return jax.vmap(lambda x, l: lip("xla")(x[None], l[None])[0])(x, l)


def mixed_branch(x, l):
    w = _window(x)
    shift, fast = X._image_stats(l, w, jnp.float32)
    return X._mixed_lip(x, l, shift, fast, w)


def gated(pool):
    """`pool` of `soft_gate(l)`, the logits made inside the timed function."""
    return lambda x, l: pool(x, ops.soft_gate(l))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32,56,56,256", "128,28,28,32"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bench_xla_parts.json")
    args = parser.parse_args(argv)
    pools = {"xla (default graph)": lip("xla"), "bounded logits (fast form only)": bounded,
             "stats + cond, fast both ways": stats_cond_fast,
             "cond alone, fast both ways": cond_fast,
             "autodiff of fast form": fast_autodiff,
             "autodiff of per-window form": window_autodiff,
             "vmap over images": per_example, "mixed branch": mixed_branch,
             "naive autodiff": naive_lip, "xla (default graph), gate in jit": gated(lip("xla")),
             "bounded logits, gate in jit": gated(bounded),
             "naive autodiff, gate in jit": gated(naive_lip)}
    if jax.default_backend() == "gpu":
        pools |= {kernel: lip(kernel) for kernel in ("pallas_gpu", "pallas_mosaic_gpu")}
    rows = []
    for shape in [tuple(int(v) for v in s.split(",")) for s in args.shapes]:
        for dtype in (jnp.float32, jnp.bfloat16):
            k1, k2 = jax.random.split(jax.random.key(0))
            x = jax.random.normal(k1, shape, dtype)
            l = ops.soft_gate(jax.random.normal(k2, shape)).astype(dtype)
            timers = {name: jax_timer(pool, x, l) for name, pool in pools.items()}
            for name, (fwd, fwd_bwd) in interleaved_medians(timers, args.reps,
                                                            args.inner).items():
                rows.append(dict(shape=list(shape), dtype=jnp.dtype(dtype).name, variant=name,
                                 forward_ms=fwd, forward_backward_ms=fwd_bwd))
                print(f"{str(shape):>20} {rows[-1]['dtype']:>9} {name:>33} {fwd:8.3f} "
                      f"{fwd_bwd:8.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(device=jax.devices()[0].device_kind,
                                        jax=jax.__version__, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
