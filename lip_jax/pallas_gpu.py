"""Fused 2-D LIP pooling for GPU in Pallas (Triton): one forward and one backward kernel.

Layout `(N, H, W, C)` inputs, `(N, H, W, L)` logits with `L` dividing `C` (features
`c` use logit `c // (C // L)`: per-feature, shared and grouped logits alike). Any
window, stride and explicit `(low, high)` padding.

- Forward: one program per (image, output row, tile of `BLOCK_W` output columns x
  up to `MAX_BLOCK_C` features). It reads the window taps of `x` and the logits (halo included;
  neighbouring tiles share rows through the cache), subtracts each window's own maximum
  logit `top`, sums in float32 and writes `y`; under differentiation also `top` and
  `log_total`, the log of the window's weight sum (all float32), so that
  `y[p] = sum_q exp(l[q] - top[p] - log_total[p]) x[q]` over the in-image pixels `q` of
  window `p`. Keeping `top` and `log_total` apart (not their sum, rounded at the logits'
  magnitude) keeps the gradients exact at any logit magnitude.
- Backward: one program per (image, `sh` input rows, tile of `BLOCK_W * sw` input
  columns x features), looping over the stride phases so that which windows cover a
  pixel, and as which tap, is static. Each input pixel gathers from those windows (no
  atomics):
  `dx[q] = sum_p a[p,q] g[p]`, `dl[q] = sum_p a[p,q] g[p] (x[q] - y[p])`,
  `a[p,q] = exp(l[q] - top[p] - log_total[p])`, with `y` the float32 output;
  `dl` is per feature (float32) and summed to `L` by `lip_jax.lip_kernel`.

Written for Pallas' Triton backend (GPU): block shapes are powers of two, loads are
masked gathers. Elsewhere the kernels run in interpret mode (slow, for tests only).
`lip_jax.pallas_tpu` is the TPU variant. JAX 0.11 warns that the Triton backend is
deprecated in favour of Mosaic GPU.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lip_jax.lip_kernel import out_struct

PLATFORM = "gpu"
BLOCK_W = 8  # output columns (forward) or column strides (backward) per program
MAX_BLOCK_C = 64  # features per program
NUM_WARPS = 2  # (8, 64, 2): fastest of 4 tilings on an H200 (experiments/gpu_check.py)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tile(width: int, features: int):
    """(block_w, block_c, column tiles, feature tiles) for a row of `width` x `features`."""
    bc = min(_pow2(features), MAX_BLOCK_C)
    return BLOCK_W, bc, pl.cdiv(width, BLOCK_W), pl.cdiv(features, bc)


def _lanes(t, n_ctiles, bw, bc):
    """Column and feature indices of program tile `t`: (bw, 1) and (1, bc) int32."""
    cols = (t // n_ctiles) * bw + jnp.arange(bw, dtype=jnp.int32)[:, None]
    feats = (t % n_ctiles) * bc + jnp.arange(bc, dtype=jnp.int32)[None, :]
    return cols, feats


def _load(ref, n, row, cols, feats, mask, size):
    """Masked gather of `ref[n, row, cols, feats]` as float32 (0 where masked).

    Indices are clamped in bounds so that interpret mode's gathers never wrap.
    """
    h, w, c = size
    index = (n, jnp.clip(row, 0, h - 1), jnp.clip(cols, 0, w - 1), jnp.clip(feats, 0, c - 1))
    value = plgpu.load(ref.at[index], mask=mask, other=0).astype(jnp.float32)
    return jnp.where(mask, value, 0.0)


def _forward_kernel(x_ref, l_ref, y_ref, *stat_refs, geometry, bw, bc, n_ctiles):
    (kh, kw), (sh, sw), (ph, pw) = geometry
    _, h, w, c = x_ref.shape
    wo, groups = y_ref.shape[2], l_ref.shape[3]
    n, i = pl.program_id(0), pl.program_id(1)
    j, feats = _lanes(pl.program_id(2), n_ctiles, bw, bc)
    lfeats = feats // (c // groups)
    taps = []
    for di in range(kh):
        row = i * sh - ph + di
        for dj in range(kw):
            cols = j * sw - pw + dj
            mask = (row >= 0) & (row < h) & (cols >= 0) & (cols < w) & (feats < c)
            taps.append((mask, _load(x_ref, n, row, cols, feats, mask, (h, w, c)),
                         _load(l_ref, n, row, cols, lfeats, mask, (h, w, groups))))
    top = functools.reduce(jnp.maximum, [jnp.where(m, l, -jnp.inf) for m, _, l in taps])
    total = jnp.zeros((bw, bc), jnp.float32)
    acc = jnp.zeros((bw, bc), jnp.float32)
    for mask, xv, lv in taps:
        e = jnp.where(mask, jnp.exp(lv - top), 0.0)
        total += e
        acc += jnp.where(mask, e * xv, 0.0)
    out = (j < wo) & (feats < c)
    index = (n, i, jnp.where(out, j, wo), jnp.where(out, feats, c))  # masked lanes: drop
    plgpu.store(y_ref.at[index], (acc / total).astype(y_ref.dtype), mask=out)
    for ref, value in zip(stat_refs, (top, jnp.log(total))):  # (top_ref, log_total_ref)
        plgpu.store(ref.at[index], value, mask=out)


def _covering_taps(k: int, s: int, lo: int, phase: int):
    """(window offset d, tap t) pairs for input index `s * m + phase`: it is tap `t` of
    window `m + d` along this axis (static: t + (m + d) * s - lo = s * m + phase)."""
    return [((phase + lo - t) // s, t) for t in range(k) if (phase + lo - t) % s == 0]


def _backward_kernel(x_ref, l_ref, y_ref, top_ref, log_total_ref, g_ref, dx_ref, dl_ref, *,
                     geometry, bw, bc, n_ctiles):
    """Input rows `sh * m + a` and columns `sw * (tile * bw + lane) + b` for every stride
    phase (a, b): which windows cover such a pixel, and as which tap, is static."""
    (kh, kw), (sh, sw), (ph, pw) = geometry
    _, h, w, c = x_ref.shape
    ho, wo, groups = y_ref.shape[1], y_ref.shape[2], l_ref.shape[3]
    n, m = pl.program_id(0), pl.program_id(1)
    units, feats = _lanes(pl.program_id(2), n_ctiles, bw, bc)  # column units of width sw
    lfeats = feats // (c // groups)
    for a in range(sh):
        r = sh * m + a
        for b in range(sw):
            cols = sw * units + b
            here = (r < h) & (cols < w) & (feats < c)
            xq = _load(x_ref, n, r, cols, feats, here, (h, w, c))
            lq = _load(l_ref, n, r, cols, lfeats, here, (h, w, groups))
            dx = jnp.zeros((bw, bc), jnp.float32)
            dl = jnp.zeros((bw, bc), jnp.float32)
            for di, _ in _covering_taps(kh, sh, ph, a):
                for dj, _ in _covering_taps(kw, sw, pw, b):
                    i, j = m + di, units + dj
                    mask = here & (i >= 0) & (i < ho) & (j >= 0) & (j < wo)
                    g = _load(g_ref, n, i, j, feats, mask, (ho, wo, c))
                    yp = _load(y_ref, n, i, j, feats, mask, (ho, wo, c))
                    top = _load(top_ref, n, i, j, feats, mask, (ho, wo, c))
                    log_total = _load(log_total_ref, n, i, j, feats, mask, (ho, wo, c))
                    ag = jnp.where(mask, jnp.exp(lq - top - log_total) * g, 0.0)
                    dx += ag
                    dl += jnp.where(mask, ag * (xq - yp), 0.0)
            index = (n, jnp.minimum(r, h - 1), jnp.where(here, cols, w),
                     jnp.where(here, feats, c))  # masked lanes out of bounds: dropped
            plgpu.store(dx_ref.at[index], dx.astype(dx_ref.dtype), mask=here)
            plgpu.store(dl_ref.at[index], dl, mask=here)


def _call(kernel, grid, out_shape, interpret, *args, **params):
    return pl.pallas_call(functools.partial(kernel, **params), grid=grid, out_shape=out_shape,
                          compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS),
                          interpret=interpret)(*args)


def _lows(geometry):
    """The kernels' static geometry: ((kh, kw), (sh, sw), (low pad h, low pad w)); the
    high pads only set the output size."""
    window, strides, pads = geometry
    return tuple(window), tuple(strides), tuple(lo for lo, _ in pads)


def forward(x, logits, geometry, interpret: bool, residuals: bool):
    """`y` `(N, Ho, Wo, C)` in x.dtype; with `residuals`, `(y in float32, (top,
    log_total))` for `backward`."""
    window, strides, pads = geometry
    n, h, w, c = x.shape
    ho, wo = ((size + lo + hi - k) // s + 1
              for size, k, s, (lo, hi) in zip((h, w), window, strides, pads))
    bw, bc, n_wtiles, n_ctiles = _tile(wo, c)
    out = out_struct((n, ho, wo, c), jnp.float32 if residuals else x.dtype, x)
    out = (out, out, out) if residuals else (out,)
    y, *stats = _call(_forward_kernel, (n, ho, n_wtiles * n_ctiles), out, interpret, x,
                      logits, geometry=_lows(geometry), bw=bw, bc=bc, n_ctiles=n_ctiles)
    return (y, tuple(stats)) if residuals else y


def backward(x, logits, y, stats, g, geometry, interpret: bool):
    """(dx in x.dtype, d logits per feature in float32), both `(N, H, W, C)`."""
    n, h, w, c = x.shape
    sh, sw = geometry[1]
    bw, bc, n_wtiles, n_ctiles = _tile(pl.cdiv(w, sw), c)
    out = (out_struct(x.shape, x.dtype, x), out_struct(x.shape, jnp.float32, x))
    return _call(_backward_kernel, (n, pl.cdiv(h, sh), n_wtiles * n_ctiles), out, interpret,
                 x, logits, y, *stats, g, geometry=_lows(geometry), bw=bw, bc=bc,
                 n_ctiles=n_ctiles)


def interpret_mode() -> bool:
    """Pallas' interpret argument for running these kernels off a GPU."""
    return True
