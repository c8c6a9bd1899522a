"""Fused 2-D LIP pooling for TPU in Pallas (Mosaic): one forward and one backward kernel.

XLA first pads the inputs (x with 0, logits with -inf: padding weighs 0) and splits them
by stride phase in float32 (`lip_jax.phase_split`), so that every window tap is a
unit-stride slice. Blocks keep `(Wq, C)` as the
tiled minor dims (Wq whole on sublanes, C in tiles of 128 lanes, or whole when C is not
a multiple of 128); the major dim, rows, comes in bands of `R` sized to a VMEM budget,
with the halo rows below a band as one-row blocks, copied with it into a VMEM scratch.

- Forward: per band of output rows, each window's max logit `top`, `log_total` (the log
  of its weight sum, relative to `top`) and `y`, so that
  `y[p] = sum_q exp(l[q] - top[p] - log_total[p]) x[q]`.
- Backward: per band of input phase rows, each input pixel gathers from the windows that
  cover it, which are static per stride phase; the output-shaped arrays are padded by
  XLA so that these are unit-stride slices too, and windows outside the output masked:
  `dx[q] = sum_p a[p,q] g[p]`, `dl[q] = sum_p a[p,q] g[p] (x[q] - y[p])`.

The preparation (pad and phase split, and its inverse for the gradients) costs memory
traffic that a kernel reading strided taps itself would not. This kernel is tested
against the XLA graph with Pallas' TPU interpreter; its speed has not been measured on a
TPU, so "xla" stays the TPU default.
"""

from __future__ import annotations

import functools
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lip_jax.lip_kernel import out_struct
from lip_jax.phase_split import Plan, merge, plan_of, split

PLATFORM = "tpu"
LANES = 128
VMEM_BUDGET = 6 * 2**20  # bytes per program for its bands (blocks double-buffered)
VMEM_LIMIT = 32 * 2**20


def interpret_mode():
    """Pallas' interpret argument for running these kernels off a TPU."""
    return pltpu.InterpretParams()


def _channel_tile(c: int) -> int:
    return LANES if c % LANES == 0 else c


def _band_rows(bytes_per_row: int, rows: int) -> int:
    return int(max(1, min(rows, VMEM_BUDGET // bytes_per_row)))


def _band(scratch, block, halos, rows: int):
    """Copies a band's block `(1, ..., R, ...)` and its one-row halo blocks into
    `scratch` along its row dim (-3)."""
    scratch[..., pl.ds(0, rows), :, :] = block[0]
    for t, halo in enumerate(halos):
        scratch[..., pl.ds(rows + t, 1), :, :] = halo[0]


def _forward_kernel(x_ref, l_ref, *refs, plan: Plan, rows: int, residuals: bool):
    hb = plan.hb
    x_halos, l_halos = refs[:hb], refs[hb:2 * hb]
    outs, (x_band, l_band) = refs[2 * hb:-2], refs[-2:]
    _band(x_band, x_ref, x_halos, rows)
    _band(l_band, l_ref, l_halos, rows)
    taps = [(x_band[di % plan.sh, dj % plan.sw, pl.ds(di // plan.sh, rows),
                    pl.ds(dj // plan.sw, plan.wo), :],
             l_band[di % plan.sh, dj % plan.sw, pl.ds(di // plan.sh, rows),
                    pl.ds(dj // plan.sw, plan.wo), :])
            for di in range(plan.kh) for dj in range(plan.kw)]
    top = functools.reduce(jnp.maximum, [l for _, l in taps])
    total = jnp.zeros(top.shape, jnp.float32)
    acc = jnp.zeros(taps[0][0].shape, jnp.float32)
    for x, l in taps:
        e = jnp.exp(l - top)
        total += e
        acc += jnp.where(e > 0, e * x, 0.0)
    y = acc / total
    values = (y, jnp.broadcast_to(top, y.shape), jnp.broadcast_to(jnp.log(total), y.shape))
    for ref, value in zip(outs, values if residuals else values[:1]):
        ref[0] = value.astype(ref.dtype)


def _halo_specs(block, index, rows: int, count: int, last: int, dim: int):
    """One-row blocks for the `count` rows after a band of `rows` (clamped to `last`)."""
    def spec(t):
        def index_map(*grid):
            at = list(index(*grid))
            at[dim] = jnp.minimum(grid[2] * rows + rows + t, last)
            return tuple(at)
        return pl.BlockSpec(block, index_map)
    return [spec(t) for t in range(count)]


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, interpret, *args):
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=scratch, interpret=interpret,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",) * len(grid), vmem_limit_bytes=VMEM_LIMIT),
    )(*args)


def _lanes(logits, c: int):
    """(logits, feature tile, logit tile): shared `(..., 1)` or per-feature `(..., C)`
    logits as they are, groups broadcast to features; features in tiles of 128 lanes (or
    all), logits in the same tiles or one lane."""
    if logits.shape[-1] not in (1, c):
        logits = jnp.repeat(logits, c // logits.shape[-1], axis=-1)
    ct = _channel_tile(c)
    return logits, ct, ct if logits.shape[-1] == c else 1


def forward(x, logits, geometry, interpret, residuals: bool):
    """`y` `(N, Ho, Wo, C)` in x.dtype; with `residuals`, `(y in float32, (top,
    log_total))` for `backward`."""
    n, h, w, c = x.shape
    plan = plan_of(geometry, h, w)
    logits, ct, ctl = _lanes(logits, c)
    per_row = 4 * plan.sh * plan.sw * plan.wq * (ct + ctl) * 3 + 4 * plan.wo * ct * 6
    rows = _band_rows(per_row, plan.ho)
    grid = (n, c // ct, pl.cdiv(plan.ho, rows))
    xs, ls = split(x, plan, 0), split(logits, plan, -np.inf)

    def spec(width, channels):
        def index(i, j, k):
            return (i, 0, 0, k, 0, j if channels == ct else 0)
        block = (1, plan.sh, plan.sw, width, plan.wq, channels)
        return block, index

    x_block, x_index = spec(rows, ct)
    l_block, l_index = spec(rows, ctl)
    halo = [
        *_halo_specs(spec(1, ct)[0], x_index, rows, plan.hb, plan.hq - 1, 3),
        *_halo_specs(spec(1, ctl)[0], l_index, rows, plan.hb, plan.hq - 1, 3)]
    in_specs = [pl.BlockSpec(x_block, x_index), pl.BlockSpec(l_block, l_index), *halo]
    out_spec = pl.BlockSpec((1, rows, plan.wo, ct), lambda i, j, k: (i, k, 0, j))
    dtypes = (jnp.float32,) * 3 if residuals else (x.dtype,)
    out_shape = [out_struct((n, plan.ho, plan.wo, c), d, x) for d in dtypes]
    scratch = [pltpu.VMEM((plan.sh, plan.sw, rows + plan.hb, plan.wq, k), jnp.float32)
               for k in (ct, ctl)]
    kernel = functools.partial(_forward_kernel, plan=plan, rows=rows, residuals=residuals)
    y, *stats = _call(kernel, grid, in_specs, [out_spec] * len(dtypes), out_shape, scratch,
                      interpret, xs, ls, *[xs] * plan.hb, *[ls] * plan.hb)
    return (y, tuple(stats)) if residuals else y


def _backward_kernel(x_ref, l_ref, *refs, plan: Plan, rows: int):
    hb = plan.hb
    blocks, halos = refs[:4], refs[4:4 + 4 * hb]
    (dx_ref, dl_ref), bands = refs[4 + 4 * hb:-4], refs[-4:]
    for k, band in enumerate(bands):  # g, y, top, log_total over padded output rows
        _band(band, blocks[k], halos[k * hb:(k + 1) * hb], rows)
    m0 = pl.program_id(2) * rows
    shape = (rows, plan.wq, x_ref.shape[-1])
    row = m0 + lax.broadcasted_iota(jnp.int32, shape, 0)
    col = lax.broadcasted_iota(jnp.int32, shape, 1)
    for a in range(plan.sh):
        for b in range(plan.sw):
            xq, lq = x_ref[0, a, b], l_ref[0, a, b]
            dx = jnp.zeros(shape, jnp.float32)
            dl = jnp.zeros(shape, jnp.float32)
            covering = [(u, v) for u in range(plan.hb + 1) for v in range(plan.vb + 1)
                        if u * plan.sh + a < plan.kh and v * plan.sw + b < plan.kw]
            for u, v in covering:  # pixel q is tap (u sh + a, v sw + b) of window q - (u, v)
                g, y, top, log_total = (
                    band[pl.ds(hb - u, rows), pl.ds(plan.vb - v, plan.wq), :]
                    for band in bands)
                valid = ((row - u >= 0) & (row - u < plan.ho) & (col - v >= 0)
                         & (col - v < plan.wo))
                ag = jnp.where(valid, jnp.exp(lq - top - log_total) * g, 0.0)
                dx += ag
                dl += jnp.where(valid, ag * (xq - y), 0.0)
            dx_ref[0, a, b] = dx
            dl_ref[0, a, b] = dl


def backward(x, logits, y, stats, g, geometry, interpret):
    """(dx, d logits per feature), both `(N, H, W, C)` float32."""
    n, h, w, c = x.shape
    plan = plan_of(geometry, h, w)
    logits, ct, ctl = _lanes(logits, c)
    per_row = (4 * plan.sh * plan.sw * plan.wq * (ct * 3 + ctl) * 2
               + 4 * (plan.wo + 2 * plan.vb) * ct * 4 * 3)
    rows = _band_rows(per_row, plan.hq)
    grid = (n, c // ct, pl.cdiv(plan.hq, rows))
    xs, ls = split(x, plan, 0), split(logits, plan, -np.inf)
    pads = ((0, 0), (plan.hb, plan.hb), (plan.vb, plan.vb), (0, 0))
    outs = [jnp.pad(a.astype(jnp.float32), pads) for a in (g, y, *stats)]

    def phase_index(i, j, k):
        return (i, 0, 0, k, 0, j)

    def out_index(i, j, k):
        return (i, k, 0, j)

    def l_index(i, j, k):
        return (i, 0, 0, k, 0, j if ctl == ct else 0)

    phase_block = (1, plan.sh, plan.sw, rows, plan.wq, ct)
    out_block = (1, rows, plan.wo + 2 * plan.vb, ct)
    halo = _halo_specs((1, 1, plan.wo + 2 * plan.vb, ct), out_index, rows, plan.hb,
                       plan.ho + 2 * plan.hb - 1, 1)
    in_specs = [pl.BlockSpec(phase_block, phase_index),
                pl.BlockSpec((*phase_block[:-1], ctl), l_index),
                *[pl.BlockSpec(out_block, out_index)] * 4, *halo * 4]
    out_shape = [out_struct(xs.shape[:-1] + (c,), jnp.float32, x)] * 2
    scratch = [pltpu.VMEM((rows + plan.hb, plan.wo + 2 * plan.vb, ct), jnp.float32)] * 4
    kernel = functools.partial(_backward_kernel, plan=plan, rows=rows)
    dxs, dls = _call(kernel, grid, in_specs, [pl.BlockSpec(phase_block, phase_index)] * 2,
                     out_shape, scratch, interpret, xs, ls, *outs,
                     *[a for a in outs for _ in range(plan.hb)])
    return merge(dxs, plan, h, w), merge(dls, plan, h, w)
