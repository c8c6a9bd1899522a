"""Stride-phase split for the Mosaic kernels (`lip_jax.pallas_tpu`,
`lip_jax.pallas_mosaic_gpu`): XLA pads the inputs and splits them by stride phase,
`(N, H, W, K) -> (N, sh, sw, Hq, Wq, K)`, so that every window tap is a unit-stride
slice: tap `(di, dj)` of output `(i, j)` is phase `(di % sh, dj % sw)` at
`(i + di // sh, j + dj // sw)`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax


class Plan(NamedTuple):
    """Static sizes: window, strides, low pads, output and phase-split sizes, halos."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    ho: int
    wo: int
    hq: int  # phase rows: ho + hb, or more (rounded up to whole tiles)
    wq: int  # phase columns: wo + vb, or more
    hb: int  # halo: (kh - 1) // sh phase rows
    vb: int  # (kw - 1) // sw phase columns


def plan_of(geometry, h: int, w: int) -> Plan:
    """The plan of `geometry` ((kh, kw), (sh, sw), ((ph, ph_hi), (pw, pw_hi))) on an
    `h x w` input, with the fewest phase rows and columns."""
    (kh, kw), (sh, sw), ((ph, ph_hi), (pw, pw_hi)) = geometry
    ho, wo = (h + ph + ph_hi - kh) // sh + 1, (w + pw + pw_hi - kw) // sw + 1
    hb, vb = (kh - 1) // sh, (kw - 1) // sw
    return Plan(kh, kw, sh, sw, ph, pw, ho, wo, ho + hb, wo + vb, hb, vb)


def split(a, p: Plan, fill):
    """`(N, H, W, K)` -> `(N, sh, sw, Hq, Wq, K)` float32: padded with `fill`, cropped
    where no window reaches, split by stride phase."""
    n, h, w, k = a.shape
    rows, cols = p.hq * p.sh, p.wq * p.sw
    pads = ((0, 0, 0), (p.ph, rows - p.ph - h, 0), (p.pw, cols - p.pw - w, 0), (0, 0, 0))
    a = lax.pad(a.astype(jnp.float32), np.float32(fill), pads)
    return a.reshape(n, p.hq, p.sh, p.wq, p.sw, k).transpose(0, 2, 4, 1, 3, 5)


def merge(a, p: Plan, h: int, w: int):
    """The inverse of `split`: `(N, sh, sw, Hq, Wq, K)` -> `(N, H, W, K)`, 0 where no
    window reaches."""
    n, k = a.shape[0], a.shape[-1]
    rows, cols = p.hq * p.sh, p.wq * p.sw
    a = a.transpose(0, 3, 1, 4, 2, 5).reshape(n, rows, cols, k)
    pads = ((0, 0, 0), (-p.ph, h + p.ph - rows, 0), (-p.pw, w + p.pw - cols, 0), (0, 0, 0))
    return lax.pad(a, np.float32(0), pads)
