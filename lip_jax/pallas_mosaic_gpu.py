"""Fused 2-D LIP pooling for GPU in Pallas' Mosaic GPU backend: one forward and one
backward kernel, the successor of the Triton kernel (`lip_jax.pallas_gpu`), whose
backend JAX 0.11 deprecates.

As for the TPU kernel, XLA pads the inputs (x with 0, logits with -inf) and splits them
by stride phase in float32 (`lip_jax.phase_split`), so that every window tap is a
unit-stride slice; it also pads the features to whole tiles of `_channel_tile` and the
output to whole tiles of rows and columns, and crops the results. Each program (CUDA
block) copies its tile, halo included, from global to shared memory with the TMA, and
computes in registers:

- Forward: per tile of output rows x `COLUMNS` columns x features, each window's max
  logit `top`, `log_total` (the log of its weight sum, relative to `top`) and `y`, so
  that `y[p] = sum_q exp(l[q] - top[p] - log_total[p]) x[q]`.
- Backward: per tile of input phase rows x columns x features, each input pixel gathers
  from the windows that cover it (static per stride phase):
  `dx[q] = sum_p a[p,q] g[p]`, `dl[q] = sum_p a[p,q] g[p] (x[q] - y[p])`. XLA pads the
  output-shaped arrays so that windows outside the output weigh nothing (`g = 0`,
  `top = +inf`).

Off a GPU it runs in Mosaic GPU's interpret mode (tests; one device only: JAX 0.10's
interpreter fails when several run it at once); `jax.export` for "cuda" lowers it on any
machine. Its speed has not been measured yet: "pallas" on a GPU stays the
Triton kernel until `experiments/gpu_check.sh` decides.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from lip_jax.lip_kernel import out_struct
from lip_jax.phase_split import Plan, merge, plan_of, split
from lip_jax.sharded import device_count

PLATFORM = "gpu"
COLUMNS = 16  # output (forward) or input phase (backward) columns per program
SMEM_BUDGET = 160 * 2**10  # bytes of shared memory per program
_F32_BYTES = 4


def interpret_mode():
    """The interpret argument that runs these kernels off a GPU (Mosaic GPU's
    interpreter, which JAX 0.10 exports only from a private module)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import (  # noqa: PLC0415
        InterpretGPUParams)

    return InterpretGPUParams(uninitialized_memory="zero")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _channel_tile(c: int) -> int:
    """Features per program: the TMA moves multiples of 16 bytes, and a warpgroup's
    registers hold multiples of 128 elements."""
    return 16 if c <= 16 else 32


def _column_tile(width: int) -> int:
    return 8 if width <= 8 else COLUMNS


def _rows(per_row: int, fixed: int, total: int) -> int:
    """Rows per program within SMEM_BUDGET."""
    return int(max(1, min(total, (SMEM_BUDGET - fixed) // per_row)))


def _features(a, cp: int):
    """`(..., C)` padded with zeros to `cp` features."""
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, cp - a.shape[-1])])


def _phases(a, p: Plan, fill, cp: int):
    """`(N, H, W, K)` -> `(N * sh, sw, Hq, Wq, cp)` float32 (5-D, as the TMA takes)."""
    s = split(_features(a, cp), p, fill)
    return s.reshape(-1, *s.shape[2:])


def _grid_names(grid):
    return dict(grid=grid, grid_names=("n", "c", "r", "w"))


def _program():
    return tuple(lax.axis_index(a) for a in ("n", "c", "r", "w"))


def _load(pairs, barriers):
    """Starts a TMA copy for each `(global slice, shared ref)`, then waits for all."""
    for k, (src, dst) in enumerate(pairs):
        plgpu.copy_gmem_to_smem(src, dst, barriers.at[k])
    for k in range(len(pairs)):
        plgpu.barrier_wait(barriers.at[k])


def _store(pairs):
    """Copies each `(shared ref, global slice)` with the TMA and waits."""
    plgpu.commit_smem()
    for src, dst in pairs:
        plgpu.copy_smem_to_gmem(src, dst)
    plgpu.wait_smem_to_gmem(0)


def _forward_kernel(xs, ls, *refs, plan: Plan, rows: int, wt: int, ct: int):
    n_out = (len(refs) - 3) // 2
    outs, (x_band, l_band), bufs, barriers = (refs[:n_out], refs[n_out:n_out + 2],
                                              refs[n_out + 2:-1], refs[-1])
    n, c, r, w = _program()
    band = (pl.ds(n * plan.sh, plan.sh), slice(None), pl.ds(r * rows, rows + plan.hb),
            pl.ds(w * wt, wt + plan.vb), pl.ds(c * ct, ct))
    _load([(xs.at[band], x_band), (ls.at[band], l_band)], barriers)
    taps = [(di % plan.sh, dj % plan.sw, pl.ds(di // plan.sh, rows), pl.ds(dj // plan.sw, wt))
            for di in range(plan.kh) for dj in range(plan.kw)]
    top = functools.reduce(jnp.maximum, [l_band[t] for t in taps])
    total = jnp.zeros_like(top)
    acc = jnp.zeros_like(top)
    for t in taps:
        e = jnp.exp(l_band[t] - top)
        total += e
        acc += jnp.where(e > 0, e * x_band[t], 0.0)
    for buf, value in zip(bufs, (acc / total, top, jnp.log(total))):
        buf[...] = value.astype(buf.dtype)
    tile = (n, pl.ds(r * rows, rows), pl.ds(w * wt, wt), pl.ds(c * ct, ct))
    _store([(buf, out.at[tile]) for buf, out in zip(bufs, outs)])


def forward(x, logits, geometry, interpret, residuals: bool):
    """`y` `(N, Ho, Wo, C)` in x.dtype; with `residuals`, `(y in float32, (top,
    log_total))` for `backward`."""
    if interpret and (devices := device_count(x)) > 1:  # the backward follows a forward
        raise ValueError(f"implementation='pallas_mosaic_gpu' off a GPU runs in Mosaic GPU's "
                         f"interpreter, which takes one device; these inputs span {devices} "
                         f"(pass single-device arrays, or use 'pallas_gpu' or 'xla')")
    n, h, w, c = x.shape
    p = plan_of(geometry, h, w)
    ct, wt = _channel_tile(c), _column_tile(p.wo)
    dtypes = (jnp.float32,) * 3 if residuals else (x.dtype,)
    per_row = _F32_BYTES * ct * (2 * p.sh * p.sw * (wt + p.vb) + len(dtypes) * wt)
    rows = _rows(per_row, 2 * _F32_BYTES * ct * p.sh * p.sw * p.hb * (wt + p.vb), p.ho)
    ho, wo, cp = _round_up(p.ho, rows), _round_up(p.wo, wt), _round_up(c, ct)
    p = p._replace(hq=ho + p.hb, wq=wo + p.vb)
    logits = jnp.repeat(logits, c // logits.shape[-1], axis=-1)  # per feature
    xs, ls = _phases(x, p, 0, cp), _phases(logits, p, -np.inf, cp)
    band = (p.sh, p.sw, rows + p.hb, wt + p.vb, ct)
    kernel = plgpu.kernel(
        functools.partial(_forward_kernel, plan=p, rows=rows, wt=wt, ct=ct),
        out_type=[out_struct((n, ho, wo, cp), d, x) for d in dtypes],
        scratch_types=[plgpu.SMEM(band, jnp.float32), plgpu.SMEM(band, jnp.float32),
                       *[plgpu.SMEM((rows, wt, ct), d) for d in dtypes],
                       plgpu.Barrier(num_arrivals=1, num_barriers=2)],
        interpret=interpret or None, **_grid_names((n, cp // ct, ho // rows, wo // wt)))
    y, *stats = (a[:, :p.ho, :p.wo, :c] for a in kernel(xs, ls))
    return (y, tuple(stats)) if residuals else y


def _backward_kernel(xs, ls, g, y, top, log_total, dxs, dls, *refs, plan: Plan, rows: int,
                     wt: int, ct: int):
    x_band, l_band, *out_bands, dx_buf, dl_buf, barriers = refs
    n, c, r, w = _program()
    feats = pl.ds(c * ct, ct)
    phase_tile = (pl.ds(n * plan.sh, plan.sh), slice(None), pl.ds(r * rows, rows),
                  pl.ds(w * wt, wt), feats)
    out_band = (n, pl.ds(r * rows, rows + plan.hb), pl.ds(w * wt, wt + plan.vb), feats)
    _load([(xs.at[phase_tile], x_band), (ls.at[phase_tile], l_band),
           *[(a.at[out_band], b) for a, b in zip((g, y, top, log_total), out_bands)]],
          barriers)
    for a in range(plan.sh):
        for b in range(plan.sw):
            xq, lq = x_band[a, b], l_band[a, b]
            dx = jnp.zeros_like(xq)
            dl = jnp.zeros_like(xq)
            covering = [(u, v) for u in range(plan.hb + 1) for v in range(plan.vb + 1)
                        if u * plan.sh + a < plan.kh and v * plan.sw + b < plan.kw]
            for u, v in covering:  # pixel q is tap (u sh + a, v sw + b) of window q - (u, v)
                window = (pl.ds(plan.hb - u, rows), pl.ds(plan.vb - v, wt))
                gp, yp, tp, lt = (band[window] for band in out_bands)
                ag = jnp.exp(lq - tp - lt) * gp
                dx += ag
                dl += ag * (xq - yp)
            dx_buf[a, b] = dx
            dl_buf[a, b] = dl
    _store([(dx_buf, dxs.at[phase_tile]), (dl_buf, dls.at[phase_tile])])


def backward(x, logits, y, stats, g, geometry, interpret):
    """(dx, d logits per feature), both `(N, H, W, C)` float32."""
    n, h, w, c = x.shape
    p = plan_of(geometry, h, w)
    ct, wt = _channel_tile(c), _column_tile(p.wq)
    phase_row = 4 * _F32_BYTES * ct * p.sh * p.sw * wt  # x, l, dx, dl
    out_row = 4 * _F32_BYTES * ct * (wt + p.vb)  # g, y, top, log_total
    rows = _rows(phase_row + out_row, out_row * p.hb, p.hq)
    cp = _round_up(c, ct)
    p = p._replace(hq=_round_up(p.hq, rows), wq=_round_up(p.wq, wt))
    logits = jnp.repeat(logits, c // logits.shape[-1], axis=-1)  # per feature
    xs, ls = _phases(x, p, 0, cp), _phases(logits, p, -np.inf, cp)

    def out_shaped(a, fill):  # windows outside the output weigh nothing
        pads = ((0, 0), (p.hb, p.hq - p.ho), (p.vb, p.wq - p.wo), (0, cp - c))
        return jnp.pad(a.astype(jnp.float32), pads, constant_values=fill)

    top, log_total = stats
    outs = [out_shaped(a, fill) for a, fill in ((g, 0), (y, 0), (top, np.inf),
                                                  (log_total, 0))]
    phase_tile = (p.sh, p.sw, rows, wt, ct)
    kernel = plgpu.kernel(
        functools.partial(_backward_kernel, plan=p, rows=rows, wt=wt, ct=ct),
        out_type=[out_struct(xs.shape, jnp.float32, x)] * 2,
        scratch_types=[plgpu.SMEM(phase_tile, jnp.float32)] * 2
        + [plgpu.SMEM((rows + p.hb, wt + p.vb, ct), jnp.float32)] * 4
        + [plgpu.SMEM(phase_tile, jnp.float32)] * 2
        + [plgpu.Barrier(num_arrivals=1, num_barriers=6)],
        interpret=interpret or None, **_grid_names((n, cp // ct, p.hq // rows, p.wq // wt)))
    dxs, dls = kernel(xs, ls, *outs)
    return tuple(merge(a.reshape(n, p.sh, *a.shape[1:])[..., :c], p, h, w)
                 for a in (dxs, dls))
