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

Arrays are NumPy, made by `numpy.random.default_rng(seed)` from a drawn seed, so that
hypothesis draws a few numbers rather than whole arrays and an example is rebuilt from
its description: inputs are `default_rng(seed).uniform(-1, 1, shape).astype(dtype)`,
logits `LogitSpec(...).make()`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

try:
    import hypothesis.strategies as st
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


@st.composite
def input_shapes(draw, spatial_ndim: int | None = None, *, max_batch_dims: int = 2,
                 max_size: int = 8, max_features: int = 4) -> tuple[int, ...]:
    """`(*batch, *spatial, features)`: up to `max_batch_dims` batch dims of 1-2,
    `spatial_ndim` (default 1-3) dims of 1 to `max_size`, 1 to `max_features` features."""
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


@st.composite
def window_geometries(draw, input_shape=None, *, spatial_ndim: int | None = None,
                      max_window: int = 4, max_stride: int | None = None,
                      paddings=PADDINGS, ceil_mode: bool | None = None,
                      valid: bool = True) -> Geometry:
    """A `Geometry` for `input_shape` (default: drawn by `input_shapes(spatial_ndim)`),
    whose spatial dims are the `spatial_ndim` (default `len(input_shape) - 2`, at least
    1) before the last. Windows 1 to `max_window`, strides 1 to `max_stride` (default
    `max_window`), padding of a kind in `paddings` ("VALID", "SAME", "pairs"),
    `ceil_mode` drawn unless given. With `valid=False`, explicit padding under which
    pooling must raise ValueError (a window of padding only, or none at all)."""
    if input_shape is None:
        spatial_ndim = spatial_ndim or draw(st.integers(1, 3))
        input_shape = draw(input_shapes(spatial_ndim))
    input_shape = tuple(input_shape)
    n = spatial_ndim or max(1, len(input_shape) - 2)
    spatial = input_shape[len(input_shape) - n - 1:-1]
    kind = draw(st.sampled_from(paddings)) if valid else "pairs"
    dims = [_valid_dim(draw, size, kind, max_window, max_stride or max_window)
            for size in spatial]
    if not valid:
        axis = draw(st.integers(0, n - 1))
        dims[axis] = _invalid_dim(draw, spatial[axis])
    window, strides, pads = (tuple(d) for d in zip(*dims))
    padding = pads if kind == "pairs" else kind
    mode = draw(st.booleans()) if ceil_mode is None else ceil_mode
    return Geometry(input_shape, window, strides, padding, mode)


def _uniform(shape, dtype, seed) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(jnp.dtype(dtype))


@st.composite
def inputs(draw, shape=None, *, dtypes=FLOAT_DTYPES) -> np.ndarray:
    """An array of `shape` (default: `input_shapes()`), uniform in [-1, 1), of a dtype in
    `dtypes` (names or NumPy/JAX dtypes; bfloat16 is `jnp.bfloat16`)."""
    shape = draw(input_shapes()) if shape is None else tuple(shape)
    return _uniform(shape, draw(st.sampled_from(dtypes)), draw(st.integers(0, 2 ** 32 - 1)))


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


def _logit_shape(draw, shape, layouts) -> tuple[tuple[int, ...], str]:
    c = shape[-1]
    groups = [g for g in range(2, c) if c % g == 0]
    layout = draw(st.sampled_from([x for x in layouts if x != "grouped" or groups]))
    return {"feature": shape, "shared": (*shape[:-1], 1), "channel": (c,),
            "grouped": (*shape[:-1], draw(st.sampled_from(groups or [c])))}[layout], layout


@st.composite
def logit_specs(draw, shape=None, *, dtype="float32", layouts=LAYOUTS,
                integer: bool | None = None, spreads=SPREADS, offsets=OFFSETS,
                exp: bool = False) -> LogitSpec:
    """The `LogitSpec` of a `logits()` (or with `exp`, `weights()`) draw."""
    shape = draw(input_shapes()) if shape is None else tuple(shape)
    logit_shape, layout = _logit_shape(draw, shape, layouts)
    if integer if integer is not None else draw(st.integers(0, 5)) == 5:
        spread, offset, dtype = (draw(st.sampled_from(INTEGER_SPREADS)),
                                 draw(st.sampled_from(INTEGER_OFFSETS)), "int32")
    else:
        top = float(jnp.finfo(jnp.dtype(dtype)).max) / 16
        spread = draw(st.sampled_from([s for s in spreads if 8 * s < top]))
        offset = draw(st.sampled_from([o for o in offsets if abs(o) + 8 * spread < top]))
    return LogitSpec(logit_shape, layout, spread, offset, jnp.dtype(dtype).name,
                     draw(st.integers(0, 2 ** 32 - 1)), exp)


def logits(shape=None, **kwargs):
    """Logits for inputs of `shape` (default: `input_shapes()`): per feature, shared
    `(..., 1)`, grouped `(..., G)` or per channel `(C,)` (`layouts=`), `offset + spread *
    normal` in `dtype` (default float32), spreads in `SPREADS` up to 1e6 and offsets in
    `OFFSETS` up to 1e12 (those the dtype holds), integers (int32) one draw in six
    unless `integer=` says."""
    return logit_specs(shape, **kwargs).map(LogitSpec.make)


WEIGHT_SPREADS = (0.0, 1.0, 5.0)
WEIGHT_OFFSETS = (0.0, -5.0, 5.0)


def _weight_kwargs(kwargs):
    return dict(spreads=WEIGHT_SPREADS, offsets=WEIGHT_OFFSETS) | kwargs | dict(integer=False,
                                                                                 exp=True)


def weights(shape=None, **kwargs):
    """Positive LAN weights for inputs of `shape`: `exp(logits)`, logits as `logits()`
    draws them but with spreads `WEIGHT_SPREADS` and offsets `WEIGHT_OFFSETS`, clipped
    to [-20, 20] (less where the dtype needs), never integer."""
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


@st.composite
def pool_examples(draw, *, with_logits: bool = True, with_weights: bool = False,
                  dtypes=FLOAT_DTYPES, geometries=None, **logit_kwargs) -> Example:
    """An `Example`: a geometry (default `window_geometries()`), inputs of a dtype in
    `dtypes` and, `with_logits`, logits in the inputs' dtype (as `logits()`, with
    `logit_kwargs`), or `with_weights` positive weights (as `weights()`)."""
    geometry = draw(window_geometries() if geometries is None else geometries)
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    x = _uniform(geometry.input_shape, dtype, seed)
    if with_weights:
        logit_kwargs = _weight_kwargs(logit_kwargs)
    spec = (draw(logit_specs(geometry.input_shape, dtype=dtype, **logit_kwargs))
            if with_logits or with_weights else None)
    return Example(x, spec.make() if spec else None, geometry, seed, spec)
