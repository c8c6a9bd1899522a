"""Window geometry stated directly: which pixels each window of a pooling holds.

A window of output index `o` along one spatial dim of size `n` (window `k`, stride `s`,
padding `(lo, hi)`) holds the image coordinates `o * s - lo + j`, `j = 0 .. k - 1`. A
coordinate is *in the image* (`0 <= c < n`), *padding* (`-lo <= c < n + hi`, outside
the image), or *beyond* the padding (only `ceil_mode`'s extra windows reach there).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Taps(NamedTuple):
    """The pixels of one window: `out` its output index, and per tap (`T` of them,
    row-major over the window) its `offset` in the window `(T, n)`, its image
    coordinate `coord` `(T, n)`, whether it is `inside` the image and whether it is
    `padded`, within the padded input (False only beyond the padding)."""

    out: tuple[int, ...]
    offset: np.ndarray
    coord: np.ndarray
    inside: np.ndarray
    padded: np.ndarray

    def image_index(self) -> tuple[np.ndarray, ...]:
        """Index arrays (one per spatial dim) of the taps in the image."""
        return tuple(self.coord[self.inside].T)


def _ints(name: str, value, n: int) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if len(out) != n or min(out, default=1) < 1:
        raise ValueError(f"{name} must be {n} positive ints, got {value!r}")
    return out


def explicit_padding(spatial_shape, window_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    """`(lo, hi)` per spatial dim. "SAME" pads `max(0, (ceil(n / s) - 1) * s + k - n)`
    in all, the smaller half low, as `lax.padtype_to_pads`; "VALID" pads nothing."""
    if isinstance(padding, str):
        if padding == "VALID":
            return tuple((0, 0) for _ in spatial_shape)
        if padding == "SAME":
            total = [max(0, (-(-n // s) - 1) * s + k - n)
                     for n, k, s in zip(spatial_shape, window_shape, strides)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise ValueError(f'padding must be "VALID", "SAME" or (low, high) pairs, got {padding!r}')
    try:
        pads = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding must be (low, high) int pairs, got {padding!r}") from None
    if len(pads) != len(window_shape) or min(min(p) for p in pads) < 0:
        raise ValueError(f"padding needs {len(window_shape)} non-negative (low, high) pairs, "
                         f"got {padding!r}")
    return pads


def output_size(n: int, k: int, s: int, lo: int, hi: int, ceil_mode: bool = False) -> int:
    """Windows along one dim: `floor((n + lo + hi - k) / s) + 1`, or with `ceil_mode`
    PyTorch's rule: `ceil(...) + 1`, less one if the last window would start past the
    image and the low padding (`(out - 1) * s >= n + lo`)."""
    span = n + lo + hi - k
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= n + lo else out


class Windows(NamedTuple):
    """A pooling's windows: the input's `spatial` shape, its `pads` (`(lo, hi)` per dim,
    without what `ceil_mode` adds), the output's spatial `out_shape`, and the `taps` of
    every window, row-major."""

    spatial: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    out_shape: tuple[int, ...]
    taps: list[Taps]


def windows(input_shape, window_shape, strides=None, padding="VALID",
            ceil_mode=False) -> Windows:
    """Every window of a pooling over `(*batch, *spatial, features)` inputs (the
    `len(window_shape)` dims before the last are spatial).

    Raises TypeError for non-int geometry or a non-bool `ceil_mode`, ValueError for a
    geometry with no window or with a window that holds no pixel of the image (checked
    without `ceil_mode`; the windows it adds then always hold one).
    """
    if not isinstance(window_shape, Sequence):
        raise TypeError(f"window_shape must be a sequence of ints, got {window_shape!r}")
    n = len(window_shape)
    if len(input_shape) < n + 1:
        raise ValueError(f"inputs of shape {tuple(input_shape)} have rank {len(input_shape)}; "
                         f"a {n}-D window needs (*batch, {n} spatial dims, features)")
    window_shape = _ints("window_shape", window_shape, n)
    strides = (1,) * n if strides is None else _ints("strides", strides, n)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    spatial = tuple(input_shape[len(input_shape) - n - 1:-1])
    pads = explicit_padding(spatial, window_shape, strides, padding)
    for axis, (size, k, s, (lo, hi)) in enumerate(zip(spatial, window_shape, strides, pads)):
        starts = [o * s - lo for o in range(output_size(size, k, s, lo, hi))]
        if not starts:
            raise ValueError(f"window {k} is larger than spatial dim {axis} of size {size} "
                             f"padded by {(lo, hi)}")
        if any(start >= size or start + k <= 0 for start in starts):
            raise ValueError(f"padding {(lo, hi)} on spatial dim {axis} (size {size}, window "
                             f"{k}, stride {s}) leaves windows that hold padding only")
    out_shape = tuple(output_size(size, k, s, lo, hi, bool(ceil_mode))
                      for size, k, s, (lo, hi) in zip(spatial, window_shape, strides, pads))
    offsets = np.array(list(itertools.product(*map(range, window_shape))), int).reshape(-1, n)
    size, high = np.array(spatial), np.array([hi for _, hi in pads])
    result = []
    for out in itertools.product(*map(range, out_shape)):
        coord = np.array(out) * np.array(strides) - np.array([lo for lo, _ in pads]) + offsets
        inside = np.all((coord >= 0) & (coord < size), axis=1)
        padded = np.all(coord < size + high, axis=1)
        result.append(Taps(out, offsets, coord, inside, padded))
    return Windows(spatial, pads, out_shape, result)
