"""Window geometry of pooling and the window sums every pooling here is made of.

`pool_window` validates a pooling's window, strides and padding against an input shape
and returns them over all dims (`Window`); `window_sum` and its transpose are the
`lax.reduce_window` sums; sums accumulate in `compute_dtype`. `float_array`,
`positive_ints`, `positive_int`, `flag` and `logit_module` check arrays, sizes, switches
and logit modules (of the poolings, layers and models), naming the argument at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import numbers
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | Sequence[tuple[int, int]]


class Window(NamedTuple):
    """Full-rank window geometry (batch and feature dims have window 1, stride 1)."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]


def positive_ints(name: str, value, n: int | None = None) -> tuple[int, ...]:
    """`n` (None: one or more) positive ints (Python or NumPy); floats and strings are
    refused by `name`, never truncated."""
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if (len(out) != n if n else not out) or any(v < 1 for v in out):
        raise ValueError(f"{name} must be {n or 'one or more'} positive ints, got {value!r}")
    return out


def positive_int(name: str, value) -> int:
    """`value` as an int; a ValueError naming `name` unless it is an integer >= 1 (bools,
    floats and strings included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def positive_floats(name: str, values) -> tuple[float, ...]:
    """`values`, one or more finite positive numbers, as floats; a TypeError (not a
    sequence of numbers) or ValueError naming `name` otherwise."""
    try:
        out = tuple(values)
        numbers_only = all(isinstance(v, numbers.Real) for v in out)
    except TypeError:  # a scalar
        numbers_only = False
    if isinstance(values, str) or not numbers_only:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    if not out or not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"{name} must be one or more finite positive numbers, got {values!r}")
    return tuple(float(v) for v in out)


def unit_interval(name: str, value):
    """`value`; a ValueError naming `name` unless it is a number in [0, 1] (NaN is not).
    An array is not checked (a traced value cannot be)."""
    if isinstance(value, numbers.Real) and not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def flag(name: str, value) -> bool:
    """`value`, a bool (Python or NumPy); a TypeError naming `name` otherwise (a string
    such as "no" would otherwise count as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def logit_module(logit):
    """`logit`, a LIP layer's logit module or function (x -> logits); a TypeError otherwise
    (None gave "'NoneType' object is not callable")."""
    if not callable(logit):
        raise TypeError(f"logit must be a logit module or function (x -> logits), got "
                        f"{logit!r}")
    return logit


def _spatial_pads(spatial_shape, window_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding not in ("VALID", "SAME"):
            raise ValueError(
                f'padding must be "VALID", "SAME" or (low, high) pairs, got {padding!r}')
        return tuple(lax.padtype_to_pads(spatial_shape, window_shape, strides, padding))
    try:
        pads = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding must be (low, high) int pairs, got {padding!r}") from None
    if len(pads) != len(window_shape) or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(
            f"padding needs {len(window_shape)} non-negative (low, high) pairs, got {padding!r}")
    return pads


def _ceil_extra(size: int, k: int, s: int, lo: int, hi: int) -> int:
    """The high padding `ceil_mode` adds along one dim, by PyTorch's rule: the output
    size rounds up, except that the last window must start inside the input or the low
    padding."""
    out = -(-(size + lo + hi - k) // s) + 1
    if (out - 1) * s >= size + lo:
        out -= 1
    return max(0, (out - 1) * s + k - (size + lo + hi))


def pool_window(input_shape, window_shape, strides=None, padding: Padding = "VALID",
                feature_ndim: int = 1, ceil_mode: bool = False) -> Window:
    """Validates a pooling geometry and returns it over all `len(input_shape)` dims.

    The spatial dims are the `len(window_shape)` dims before the last `feature_ndim`.
    `ceil_mode` rounds the output size up as PyTorch's pools do, as extra high padding
    (`Window.pads` includes it). Raises ValueError for a window larger than the padded
    input, or padding so wide that a window would hold padding only (its weights would sum
    to zero).
    """
    if not isinstance(window_shape, Sequence):
        raise TypeError(f"window_shape must be a sequence of ints, got {window_shape!r}")
    n = len(window_shape)
    if len(input_shape) < n + feature_ndim:
        raise ValueError(
            f"inputs of shape {tuple(input_shape)} have rank {len(input_shape)}; a {n}-D window "
            f"needs rank >= {n + 1}: (*batch, {n} spatial dims, features)")
    window_shape = positive_ints("window_shape", window_shape, n)
    strides = (1,) * n if strides is None else positive_ints("strides", strides, n)
    lead = len(input_shape) - n - feature_ndim
    spatial = tuple(input_shape[lead:lead + n])
    pads = _spatial_pads(spatial, window_shape, strides, padding)
    flag("ceil_mode", ceil_mode)
    for axis, (size, k, s, (lo, hi)) in enumerate(zip(spatial, window_shape, strides, pads)):
        if size + lo + hi < k:
            raise ValueError(
                f"window {k} is larger than spatial dim {axis} of size {size} padded by "
                f"({lo}, {hi}); input shape {tuple(input_shape)}")
        last_start = (size + lo + hi - k) // s * s - lo
        if lo >= k or last_start >= size:
            raise ValueError(
                f"padding ({lo}, {hi}) on spatial dim {axis} (size {size}, window {k}, "
                f"stride {s}) leaves windows that hold padding only")
    if ceil_mode:
        pads = tuple((lo, hi + _ceil_extra(size, k, s, lo, hi))
                     for size, k, s, (lo, hi) in zip(spatial, window_shape, strides, pads))
    one = (1,) * lead, (1,) * feature_ndim
    return Window(
        dims=one[0] + window_shape + one[1],
        strides=one[0] + strides + one[1],
        pads=((0, 0),) * lead + pads + ((0, 0),) * feature_ndim,
    )


def pooled_axes(window: Window):
    """(axis, window, stride, (low, high)) of each dim that is pooled."""
    return [(axis, k, s, p) for axis, (k, s, p) in
            enumerate(zip(window.dims, window.strides, window.pads)) if (k, s, p) != (1, 1, (0, 0))]


def window_sum(x: jax.Array, window: Window) -> jax.Array:
    """Sum of `x` over each window: zero padding, reducer `lax.add`, concrete 0 init.

    Computed one axis at a time (a k1 x k2 window costs k1 + k2 adds, not k1 * k2).
    """
    zero = np.zeros((), x.dtype)
    for axis, k, s, pads in pooled_axes(window):
        dims, strides, padding = [1] * x.ndim, [1] * x.ndim, [(0, 0)] * x.ndim
        dims[axis], strides[axis], padding[axis] = k, s, pads
        x = lax.reduce_window(x, zero, lax.add, dims, strides, padding)
    return x


def window_sum_transpose(u: jax.Array, window: Window, input_shape) -> jax.Array:
    """The transpose of `window_sum`: `t[q]` = sum of `u[p]` over the windows `p` holding
    `q`, an `input_shape` array (autodiff's transpose of the per-axis sums)."""
    transpose = jax.linear_transpose(lambda t: window_sum(t, window),
                                     jax.ShapeDtypeStruct(tuple(input_shape), u.dtype))
    return transpose(u)[0]


def float_array(name: str, x, ints_as=None) -> jax.Array:
    """`x` as an array with a floating dtype (integers and bools converted to `ints_as`
    where given); a TypeError naming `name` otherwise."""
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {error}") from None
    if ints_as is not None and (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        return x.astype(ints_as)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def compute_dtype(dtype) -> jnp.dtype:
    """float64 stays float64; every narrower float accumulates in float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def spatial_axes(window: Window) -> tuple[int, ...]:
    """The dims that are pooled."""
    return tuple(a[0] for a in pooled_axes(window))
