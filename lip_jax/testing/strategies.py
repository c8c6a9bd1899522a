"""Hypothesis strategies for pooling tests; every argument-free call gives a sensible default.

- `input_shapes()`: `(*batch, *spatial, features)`, 0-2 batch dims, 1-3 spatial dims.
- `window_geometries()`: a `Geometry` (input shape, window, strides, padding, ceil_mode)
  under which every window holds an image pixel: "VALID", "SAME" and `(low, high)`
  pairs (each below the window), `ceil_mode` either way; `valid=False` draws geometries
  that pooling must refuse with ValueError.
- `inputs()`: arrays uniform in [-1, 1) in float32 or bfloat16 (or `dtypes=`).
- `logits()`: `offset + spread * normal` with spreads up to 1e6 and offsets up to 1e12
  (within the dtype's range), per feature, shared, grouped or per channel, sometimes
  integers. `weights()`: positive LAN weights spanning e^-20 .. e^20.
- `pool_examples()`: an `Example` (inputs, logits, geometry) for the checks, whose `str`
  names shapes, dtypes, geometry and the seeds that rebuild its arrays.

Arguments are checked when a strategy is built: ValueError or TypeError names the one at
fault (a padding kind, a layout, a non-float dtype, spreads no dtype holds...).

Arrays are NumPy, made by `numpy.random.default_rng(seed)` from a drawn seed, so that
hypothesis draws a few numbers rather than whole arrays and an example is rebuilt from
its description: inputs are `default_rng(seed).uniform(-1, 1, shape).astype(dtype)`,
logits `LogitSpec(...).make()`.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from lip_jax.windows import flag, positive_int, positive_ints

try:
    import hypothesis.strategies as st
    from hypothesis import assume
except ImportError as e:
    raise ImportError(f"lip_jax.testing.strategies needs hypothesis ({e}): "
                      "pip install 'lip-jax[testing]'") from e

FLOAT_DTYPES = ("float32", "bfloat16")
SPREADS = (0.0, 1e-3, 1.0, 4.0, 30.0, 1e3, 1e6)
OFFSETS = (0.0, 6.0, -50.0, 1e3, -1e6, 1e6, 1e12, -1e12)
INTEGER_SPREADS = (0, 1, 10, 1000, 2 ** 20)
INTEGER_OFFSETS = (0, 7, -(2 ** 20), 2 ** 20)
LAYOUTS = ("feature", "shared", "grouped", "channel")
PADDINGS = ("VALID", "SAME", "pairs")


class Geometry(NamedTuple):
    """A pooling geometry for inputs of `input_shape`; `fn(x, ..., *g.args, **g.kwargs)`
    (`kwargs` holds `ceil_mode` only when it is True)."""

    input_shape: tuple[int, ...]
    window_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    ceil_mode: bool = False

    @property
    def args(self):
        return self.window_shape, self.strides, self.padding

    @property
    def kwargs(self):
        return {"ceil_mode": True} if self.ceil_mode else {}

    def __str__(self):
        return (f"window_shape={self.window_shape}, strides={self.strides}, "
                f"padding={self.padding!r}, ceil_mode={self.ceil_mode}")


def _sequence(values) -> tuple:
    """`values` as a tuple (a string is one value), or () if it is not a sequence."""
    try:
        return (values,) if isinstance(values, str) else tuple(values)
    except TypeError:
        return ()


def _choices(name: str, values, allowed) -> tuple:
    """`values`, one or more of `allowed`; a ValueError naming `name` otherwise."""
    chosen = _sequence(values)
    if not chosen or any(v not in allowed for v in chosen):
        raise ValueError(f"{name} must be one or more of {', '.join(map(repr, allowed))}, "
                         f"got {values!r}")
    return chosen


def _float_dtype(name: str, dtype) -> np.dtype:
    """`dtype` as a floating dtype (bfloat16 included); a TypeError naming `name` otherwise
    (pooling inputs and logits are floats)."""
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype (pooling inputs and logits are "
                        f"floats), got {dtype!r}")
    return out


def _float_dtypes(name: str, dtypes) -> tuple[np.dtype, ...]:
    """One or more floating dtypes; a TypeError naming `name` otherwise."""
    out = tuple(_float_dtype(name, d) for d in _sequence(dtypes))
    if not out:
        raise ValueError(f"{name} must be one or more floating dtypes, got {dtypes!r}")
    return out


def input_shapes(spatial_ndim: int | None = None, *, max_batch_dims: int = 2,
                 max_size: int = 8, max_features: int = 4):
    """`(*batch, *spatial, features)`: up to `max_batch_dims` batch dims of 1-2,
    `spatial_ndim` (default 1-3) dims of 1 to `max_size`, 1 to `max_features` features."""
    if spatial_ndim is not None:
        positive_int("spatial_ndim", spatial_ndim)
    if isinstance(max_batch_dims, bool) or not isinstance(max_batch_dims, numbers.Integral) or (
            max_batch_dims < 0):
        raise ValueError(f"max_batch_dims must be a non-negative int, got {max_batch_dims!r}")
    return _input_shapes(spatial_ndim, max_batch_dims, positive_int("max_size", max_size),
                         positive_int("max_features", max_features))


@st.composite
def _input_shapes(draw, spatial_ndim, max_batch_dims, max_size, max_features):
    n = draw(st.integers(1, 3)) if spatial_ndim is None else spatial_ndim
    batch = draw(st.lists(st.integers(1, 2), max_size=max_batch_dims))
    spatial = draw(st.lists(st.integers(1, max_size), min_size=n, max_size=n))
    return (*batch, *spatial, draw(st.integers(1, max_features)))


def _valid_dim(draw, size, kind, max_window, max_stride):
    """(window, stride, (lo, hi)) along one dim: lo, hi below the window and the window
    within the padded size, so every window holds an image pixel."""
    k = draw(st.integers(1, min(max_window, size) if kind == "VALID" else max_window))
    lo = draw(st.integers(0, k - 1)) if kind == "pairs" else 0
    hi = draw(st.integers(max(0, k - size - lo), k - 1)) if kind == "pairs" else 0
    return k, draw(st.integers(1, max_stride)), (lo, hi)


def _invalid_dim(draw, size):
    """(window, stride, (lo, hi)) that leaves a window of padding only or no window."""
    k = draw(st.integers(1, 4))
    way = draw(st.sampled_from(["low", "high", "wide"]))
    if way == "low":  # the first window lies in the low padding
        pads = draw(st.integers(k, k + 2)), draw(st.integers(0, k - 1))
        return k, draw(st.integers(1, 3)), pads
    if way == "high":  # stride 1: the last window lies in the high padding
        return k, 1, (0, draw(st.integers(k, k + 2)))
    lo = draw(st.integers(0, k - 1))
    hi = draw(st.integers(0, k - 1))
    return size + lo + hi + draw(st.integers(1, 2)), 1, (lo, hi)  # larger than padded input


def window_geometries(input_shape=None, *, spatial_ndim: int | None = None,
                      max_window: int = 4, max_stride: int | None = None,
                      paddings=PADDINGS, ceil_mode: bool | None = None, valid: bool = True):
    """A `Geometry` for `input_shape` (default: drawn by `input_shapes(spatial_ndim)`),
    whose spatial dims are the `spatial_ndim` (default `len(input_shape) - 2`, at least
    1) before the last. Windows 1 to `max_window`, strides 1 to `max_stride` (default
    `max_window`), padding of a kind in `paddings` ("VALID", "SAME", "pairs"),
    `ceil_mode` drawn unless given. With `valid=False`, explicit padding under which
    pooling must raise ValueError (a window of padding only, or none at all)."""
    n = None if spatial_ndim is None else positive_int("spatial_ndim", spatial_ndim)
    if input_shape is not None:
        input_shape = positive_ints("input_shape", input_shape)
        n = _spatial_ndim(input_shape, n)
    max_window = positive_int("max_window", max_window)
    max_stride = max_window if max_stride is None else positive_int("max_stride", max_stride)
    ceil_mode = None if ceil_mode is None else flag("ceil_mode", ceil_mode)
    return _window_geometries(input_shape, n, max_window, max_stride,
                              _choices("paddings", paddings, PADDINGS), ceil_mode,
                              flag("valid", valid))


def _spatial_ndim(input_shape: tuple[int, ...], spatial_ndim: int | None) -> int:
    """The number of spatial dims of `input_shape`: `spatial_ndim`, by default its rank
    less 2 (at least 1); a ValueError unless a features dim follows them."""
    n = max(1, len(input_shape) - 2) if spatial_ndim is None else spatial_ndim
    if len(input_shape) < n + 1:
        raise ValueError(f"input_shape {input_shape} is too short for spatial_ndim={n}: "
                         f"expected rank >= {n + 1}, (*batch, {n} spatial dims, features)")
    return n


@st.composite
def _window_geometries(draw, input_shape, n, max_window, max_stride, paddings, ceil_mode,
                       valid) -> Geometry:
    if input_shape is None:
        n = draw(st.integers(1, 3)) if n is None else n
        input_shape = draw(input_shapes(n))
    spatial = input_shape[len(input_shape) - n - 1:-1]
    kind = draw(st.sampled_from(paddings)) if valid else "pairs"
    dims = [_valid_dim(draw, size, kind, max_window, max_stride) for size in spatial]
    if not valid:
        axis = draw(st.integers(0, n - 1))
        dims[axis] = _invalid_dim(draw, spatial[axis])
    window, strides, pads = (tuple(d) for d in zip(*dims))
    padding = pads if kind == "pairs" else kind
    mode = draw(st.booleans()) if ceil_mode is None else ceil_mode
    return Geometry(input_shape, window, strides, padding, mode)


def _uniform(shape, dtype, seed) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(jnp.dtype(dtype))


def inputs(shape=None, *, dtypes=FLOAT_DTYPES):
    """An array of `shape` (default: `input_shapes()`), uniform in [-1, 1), of a floating
    dtype in `dtypes` (names or NumPy/JAX dtypes; bfloat16 is `jnp.bfloat16`)."""
    shapes = input_shapes() if shape is None else st.just(positive_ints("shape", shape))
    return st.builds(_uniform, shapes, st.sampled_from(_float_dtypes("dtypes", dtypes)),
                     st.integers(0, 2 ** 32 - 1))


class LogitSpec(NamedTuple):
    """How a logit array is made: `offset + spread * normal(seed)` of `shape`, in `dtype`
    (integers: `offset + integers(-spread, spread)`); with `exp`, the weights
    `exp(logits)`, logits clipped to the dtype's range."""

    shape: tuple[int, ...]
    layout: str
    spread: float
    offset: float
    dtype: str
    seed: int
    exp: bool = False

    def make(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        dtype = jnp.dtype(self.dtype)
        if jnp.issubdtype(dtype, jnp.integer):
            return (self.offset + rng.integers(-self.spread, self.spread, self.shape,
                                               endpoint=True)).astype(dtype)
        values = self.offset + self.spread * rng.standard_normal(self.shape)
        if self.exp:
            bound = min(20.0, 0.4 * np.log(float(jnp.finfo(dtype).max)))
            values = np.exp(np.clip(values, -bound, bound))
        return values.astype(dtype)

    def __str__(self):
        if jnp.issubdtype(jnp.dtype(self.dtype), jnp.integer):
            values = f"{self.offset:g} + integers(-{self.spread:g}, {self.spread:g})"
        else:
            values = f"{self.offset:g} + {self.spread:g} * normal"
        return (f"{self.dtype} {self.shape} ({self.layout}) = "
                f"{f'exp({values})' if self.exp else values}, seed {self.seed}")


def _groups(c: int) -> list[int]:
    """The group counts of grouped logits for `c` features: divisors in 2 .. c - 1."""
    return [g for g in range(2, c) if c % g == 0]


def _fitting_layouts(c: int, layouts) -> list[str]:
    """The `layouts` that logits for `c` features can take ("grouped" needs groups)."""
    return [x for x in layouts if x != "grouped" or _groups(c)]


def _logit_shape(draw, shape, layouts) -> tuple[tuple[int, ...], str]:
    c = shape[-1]
    groups = _groups(c)
    fitting = _fitting_layouts(c, layouts)
    assume(fitting)  # a drawn shape whose features no layout fits
    layout = draw(st.sampled_from(fitting))
    return {"feature": shape, "shared": (*shape[:-1], 1), "channel": (c,),
            "grouped": (*shape[:-1], draw(st.sampled_from(groups or [c])))}[layout], layout


def _scales(spreads, offsets, dtype) -> dict:
    """`{spread: offsets}`: the `spreads` and `offsets` that `dtype` holds together
    (`|offset| + 8 spread` below its max / 16); a ValueError if none."""
    top = float(jnp.finfo(dtype).max) / 16
    scales = {s: [o for o in offsets if abs(o) + 8 * s < top] for s in spreads if 8 * s < top}
    scales = {s: fitting for s, fitting in scales.items() if fitting}
    if not scales:
        raise ValueError(f"spreads={spreads!r} with offsets={offsets!r}: none fits {dtype.name} "
                         f"logits; expected |offset| + 8 * spread < {top:.3g}")
    return scales


def _logit_arguments(*, dtype="float32", layouts=LAYOUTS, integer: bool | None = None,
                     spreads=SPREADS, offsets=OFFSETS, exp: bool = False) -> dict:
    """`logits()`'s keyword arguments (and `exp`), checked, as `_logit_specs` takes them."""
    dtype = _float_dtype("dtype", dtype)
    if integer is not None:
        flag("integer", integer)
    return dict(dtype=dtype.name, layouts=_choices("layouts", layouts, LAYOUTS), integer=integer,
                scales=None if integer else _scales(spreads, offsets, dtype),
                exp=flag("exp", exp))


def logit_specs(shape=None, **kwargs):
    """The `LogitSpec` of a `logits()` (or with `exp=True`, `weights()`) draw; `kwargs`
    as `logits()` takes them."""
    arguments = _logit_arguments(**kwargs)
    if shape is not None:
        shape = positive_ints("shape", shape)
        if not _fitting_layouts(shape[-1], arguments["layouts"]):
            raise ValueError(f"layouts={arguments['layouts']!r} fit no logits for inputs of "
                             f"shape {shape}: grouped logits need G groups, 1 < G < C, "
                             f"dividing the C = {shape[-1]} features")
    return _logit_specs(shape, **arguments)


@st.composite
def _logit_specs(draw, shape, dtype, layouts, integer, scales, exp) -> LogitSpec:
    shape = draw(input_shapes()) if shape is None else shape
    logit_shape, layout = _logit_shape(draw, shape, layouts)
    if integer if integer is not None else draw(st.integers(0, 5)) == 5:
        spread, offset, dtype = (draw(st.sampled_from(INTEGER_SPREADS)),
                                 draw(st.sampled_from(INTEGER_OFFSETS)), "int32")
    else:
        spread = draw(st.sampled_from(list(scales)))
        offset = draw(st.sampled_from(scales[spread]))
    return LogitSpec(logit_shape, layout, spread, offset, dtype,
                     draw(st.integers(0, 2 ** 32 - 1)), exp)


def logits(shape=None, **kwargs):
    """Logits for inputs of `shape` (default: `input_shapes()`): per feature, shared
    `(..., 1)`, grouped `(..., G)` or per channel `(C,)` (`layouts=`), `offset + spread *
    normal` in `dtype` (default float32), spreads in `SPREADS` up to 1e6 and offsets in
    `OFFSETS` up to 1e12 (those the dtype holds), integers (int32) one draw in six
    unless `integer=` says. Refuses layouts the shape cannot take and spreads and
    offsets the dtype cannot hold."""
    return logit_specs(shape, **kwargs).map(LogitSpec.make)


WEIGHT_SPREADS = (0.0, 1.0, 5.0)
WEIGHT_OFFSETS = (0.0, -5.0, 5.0)


def _weight_kwargs(kwargs) -> dict:
    """`logit_specs` arguments for weights: `kwargs` over the weight defaults; a TypeError
    for `integer` or `exp`, which weights (exp of float logits) fix."""
    for name in ("integer", "exp"):
        if name in kwargs:
            raise TypeError(f"weights take no {name}= (they are exp of float logits, never "
                            f"integer), got {name}={kwargs[name]!r}")
    return dict(spreads=WEIGHT_SPREADS, offsets=WEIGHT_OFFSETS) | kwargs | dict(integer=False,
                                                                                 exp=True)


def weights(shape=None, **kwargs):
    """Positive LAN weights for inputs of `shape`: `exp(logits)`, logits as `logits()`
    draws them but with spreads `WEIGHT_SPREADS` and offsets `WEIGHT_OFFSETS`, clipped
    to [-20, 20] (less where the dtype needs), never integer (`integer=` is refused)."""
    return logit_specs(shape, **_weight_kwargs(kwargs)).map(LogitSpec.make)


class Example(NamedTuple):
    """Arrays and geometry of one check; `str` describes it (seeds rebuild the arrays).
    `logits` holds the logits, the weights (`spec.exp`) or None."""

    inputs: np.ndarray
    logits: np.ndarray | None
    geometry: Geometry
    input_seed: int
    spec: LogitSpec | None

    def __str__(self):
        text = (f"inputs {self.inputs.dtype} {self.inputs.shape} uniform[-1, 1) seed "
                f"{self.input_seed}; {self.geometry}")
        if self.spec is None:
            return text
        return text + f"; {'weights' if self.spec.exp else 'logits'} {self.spec}"

    __repr__ = __str__  # what hypothesis prints for a falsifying example


def pool_examples(*, with_logits: bool = True, with_weights: bool = False,
                  dtypes=FLOAT_DTYPES, geometries=None, **logit_kwargs):
    """An `Example`: a geometry (default `window_geometries()`), inputs of a floating dtype
    in `dtypes` and, `with_logits`, logits in the inputs' dtype (as `logits()`, with
    `logit_kwargs`), or `with_weights` positive weights (as `weights()`)."""
    dtypes = _float_dtypes("dtypes", dtypes)
    if geometries is None:
        geometries = window_geometries()
    elif not isinstance(geometries, st.SearchStrategy):
        raise TypeError(f"geometries must be a strategy of Geometry (window_geometries()), "
                        f"got {geometries!r}")
    with_logits, with_weights = flag("with_logits", with_logits), flag("with_weights", with_weights)
    if with_weights:
        logit_kwargs = _weight_kwargs(logit_kwargs)
    elif not with_logits and logit_kwargs:
        raise TypeError(f"pool_examples without logits or weights takes no logit arguments, "
                        f"got {sorted(logit_kwargs)}")
    arguments = ({d: _logit_arguments(dtype=d, **logit_kwargs) for d in dtypes}
                 if with_logits or with_weights else None)
    return _pool_examples(geometries, dtypes, arguments)


@st.composite
def _pool_examples(draw, geometries, dtypes, logit_arguments) -> Example:
    """`logit_arguments`: each dtype's `_logit_specs` arguments, or None for no logits."""
    geometry = draw(geometries)
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    x = _uniform(geometry.input_shape, dtype, seed)
    spec = (draw(_logit_specs(geometry.input_shape, **logit_arguments[dtype]))
            if logit_arguments else None)
    return Example(x, spec.make() if spec else None, geometry, seed, spec)
