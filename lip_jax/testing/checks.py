"""Property checks for poolings: `check_lip_properties(fn)` and siblings.

Each runs hypothesis over a few small examples (`strategies.pool_examples()`: every
padding kind, `ceil_mode`, logits with spreads up to 1e6 and offsets up to 1e12, float32
and bfloat16) and raises AssertionError naming the check, the property and the example
(shapes, dtypes, geometry, the seeds that rebuild its arrays, the worst value) when `fn`
breaks one. `fn` takes the signature of the `lip_jax` op the check is named after;
`ceil_mode=True` is passed only for examples that draw it. `max_examples` trades time for
coverage (each example compiles `fn` a few times); `seed` picks the examples;
`examples=` replaces the strategy (e.g. `pool_examples(dtypes=("float32",))`); `skip=`
names properties not to check (each check's docstring lists their names), never all.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lip_jax import ops
from lip_jax.testing import reference, strategies
from lip_jax.testing.harness import Case, run


def _pooling(fn, default):
    """`fn`, or `default` when None; a TypeError unless it is callable."""
    if fn is None:
        return default
    if not callable(fn):
        raise TypeError(f"fn must be a pooling function, got {fn!r}")
    return fn


def _logits(check: str, example, weights: bool = False) -> np.ndarray:
    """The example's logits (`weights`: its positive weights); a ValueError naming `check`
    when it has none."""
    if example.logits is None or (weights and not example.spec.exp):
        kind = "weights (with_weights=True)" if weights else "logits (with_logits=True)"
        raise ValueError(f"{check} needs examples with {kind}, got: {example}")
    return example.logits


def _window_size(example) -> int:
    return math.prod(example.geometry.window_shape)


def _within_window(case: Case, y, x, what="bounds", low=None, high=None, low_name="min",
                   high_name="max"):
    """`low <= y <= high`, by default the min and max of each window's in-image pixels
    (plus the dtype's tolerance)."""
    g = case.example.geometry
    high = reference.max_pool(x, *g.args, **g.kwargs) if high is None else high
    if low is None:
        low = -reference.max_pool(-np.asarray(x).astype(np.float64), *g.args, **g.kwargs)
    y = np.asarray(y).astype(np.float64)
    slack = case.tol * max(1.0, float(np.abs(high).max()), float(np.abs(low).max()))
    outside = ~((y >= low - slack) & (y <= high + slack))
    if outside.any():
        at = tuple(int(i) for i in np.argwhere(outside)[0])
        case.fail(what, f"{outside.sum()} outputs outside [{low_name}, {high_name}]; at {at} got "
                        f"{y[at]:.9g}, bounds [{low[at]:.9g}, {high[at]:.9g}]")


def _near_max(case: Case, y, x, beta: float, what: str):
    """`y` lies within `(K - 1) / (e beta)` below each window's max (K pixels a window),
    and not above it (plus the dtype's rounding)."""
    g = case.example.geometry
    top = reference.max_pool(x, *g.args, **g.kwargs)
    slack = 8 * float(jnp.finfo(case.example.inputs.dtype).eps) * max(1.0, np.abs(top).max())
    bound = (_window_size(case.example) - 1) / (math.e * beta)
    y = np.asarray(y).astype(np.float64)
    bad = ~((top - y >= -slack) & (top - y <= bound + slack))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        case.fail(what, f"{bad.sum()} outputs not within {bound:.3g} below their window's max; "
                        f"at {at} got {y[at]:.9g}, max {top[at]:.9g}")


def _shifted_pair(logits, seed: int):
    """`(a, a + c, c)` with both logit arrays exact in the logits' dtype: `c = +-2^p >=
    max |logits|` (Sterbenz: `fl(logits + c) - c` is exact); None if the dtype cannot
    hold such a `c`."""
    l = np.asarray(logits).astype(np.float64)
    top = 29 if jnp.issubdtype(logits.dtype, jnp.integer) else math.floor(
        math.log2(float(jnp.finfo(logits.dtype).max))) - 1
    p = min(top, math.ceil(math.log2(max(1.0, float(np.abs(l).max())))) + seed % 4)
    if 2.0 ** p < np.abs(l).max():
        return None
    c = (-1) ** (seed // 4 % 2) * 2.0 ** p
    shifted = (l + c).astype(logits.dtype)
    return (shifted.astype(np.float64) - c).astype(logits.dtype), shifted, c


def _shift_invariant(case: Case, x, l):
    pair = _shifted_pair(l, case.example.input_seed)
    if pair is not None:
        case.close(case.value(x, pair[1]), case.value(x, pair[0]),
                   f"shift: logits + {pair[2]:g} vs logits")


def check_lip_properties(fn=None, *, max_examples: int = 5, seed: int = 0, examples=None,
                         skip=()):
    """Checks `fn(inputs, logits, window_shape, strides, padding[, ceil_mode=True])`
    (default `lip_jax.lip_pool`) on `strategies.pool_examples()`; properties:

    - "reference": values and VJP (by inputs, and by logits unless integer) equal
      `reference.lip_pool`'s; the output keeps the inputs' dtype;
    - "bounds": every output lies within its window's min and max;
    - "shift": adding a constant to the logits (exactly) changes nothing;
    - "zero_logits": zero logits give average pooling over in-image pixels;
    - "large_beta": logits `beta * inputs`, beta 1e6, give max pooling, within
      `(K - 1) / (e beta)` for K-pixel windows;
    - "vmap", "variants": `jax.vmap` and chex's variants agree with `jax.jit`.
    """
    fn = _pooling(fn, ops.lip_pool)

    def properties(ex):
        g, x, l = ex.geometry, ex.inputs, _logits("check_lip_properties", ex)
        case = Case("check_lip_properties", ex, lambda x, l: fn(x, l, *g.args, **g.kwargs),
                    lambda x, l: reference.value_and_pullback(reference.lip_pool, x, l, *g.args,
                                                              **g.kwargs), ("inputs", "logits"))
        beta = min(1e6, float(jnp.finfo(x.dtype).max) / 8)
        large = (beta * x.astype(np.float64)).astype(x.dtype)
        return {
            "reference": lambda: case.matches_reference(
                x, l, diff=(0, 1) if jnp.issubdtype(l.dtype, jnp.floating) else (0,)),
            "bounds": lambda: _within_window(case, case.value(x, l), x),
            "shift": lambda: _shift_invariant(case, x, l),
            "zero_logits": lambda: case.close(
                case.value(x, np.zeros_like(l)), reference.average_pool(x, *g.args, **g.kwargs),
                "zero_logits: average pooling over in-image pixels"),
            "large_beta": lambda: _near_max(case, case.value(x, large), x, beta,
                                            f"large_beta: logits {beta:g} * inputs"),
            "vmap": lambda: case.vmap_agrees(x, l),
            "variants": lambda: case.variants_agree(x, l),
        }

    run("check_lip_properties", strategies.pool_examples() if examples is None else examples,
        properties, max_examples, seed, skip)


def check_lan_properties(fn=None, *, max_examples: int = 4, seed: int = 0, examples=None,
                         skip=()):
    """Checks `fn(inputs, weights, window_shape, strides, padding[, ceil_mode=True])`
    (default `lip_jax.lan_pool`) on `strategies.pool_examples(with_weights=True)` (positive
    weights); properties:

    - "reference": values and VJP (by inputs and weights) equal `reference.lan_pool`'s;
    - "bounds": every output lies within its window's min and max;
    - "scale": multiplying the weights by a power of two changes nothing;
    - "uniform": uniform weights give average pooling over in-image pixels;
    - "subsampling": one-hot weights at the window origins (strides raised to the
      window, no low padding) give strided subsampling, exactly;
    - "vmap", "variants": `jax.vmap` and chex's variants agree with `jax.jit`.
    """
    fn = _pooling(fn, ops.lan_pool)

    def properties(ex):
        g, x, w = ex.geometry, ex.inputs, _logits("check_lan_properties", ex, weights=True)
        case = Case("check_lan_properties", ex, lambda x, w: fn(x, w, *g.args, **g.kwargs),
                    lambda x, w: reference.value_and_pullback(reference.lan_pool, x, w, *g.args,
                                                              **g.kwargs), ("inputs", "weights"))
        scale = 2.0 ** (ex.input_seed % 9 - 4)
        return {
            "reference": lambda: case.matches_reference(x, w, diff=(0, 1)),
            "bounds": lambda: _within_window(case, case.value(x, w), x),
            "scale": lambda: case.close(
                case.value(x, (w.astype(np.float64) * scale).astype(w.dtype)), case.value(x, w),
                f"scale: weights * {scale:g} vs weights"),
            "uniform": lambda: case.close(
                case.value(x, np.ones_like(w)), reference.average_pool(x, *g.args, **g.kwargs),
                "uniform: average pooling over in-image pixels"),
            "subsampling": lambda: _subsamples(case, fn, x),
            "vmap": lambda: case.vmap_agrees(x, w),
            "variants": lambda: case.variants_agree(x, w),
        }

    examples = strategies.pool_examples(with_weights=True) if examples is None else examples
    run("check_lan_properties", examples, properties, max_examples, seed, skip)


def _subsamples(case: Case, fn, x):
    """One-hot weights at each window's origin pick that pixel: the example's windows
    with strides raised to the window and padding `(0, max(hi, k - n))`."""
    g = case.example.geometry
    n = len(g.window_shape)
    spatial = x.shape[x.ndim - n - 1:-1]
    pads = reference.explicit_padding(spatial, g.window_shape, g.strides, g.padding)
    strides = tuple(max(s, k) for s, k in zip(g.strides, g.window_shape))
    padding = tuple((0, max(hi, k - size))
                    for (_, hi), k, size in zip(pads, g.window_shape, spatial))
    one_hot = np.zeros(spatial + (1,), x.dtype)
    one_hot[tuple(slice(None, None, s) for s in strides)] = 1
    y = case.output(fn(x, one_hot, g.window_shape, strides, padding, **g.kwargs))
    origins = tuple(slice(0, m * s, s) for m, s in zip(np.shape(y)[x.ndim - n - 1:-1], strides))
    case.close(y, x[(Ellipsis, *origins, slice(None))].astype(np.float64),
               f"subsampling: one-hot weights at the origins of windows with strides {strides}, "
               f"padding {padding}", tol=0.0)


def check_average_pool_properties(fn=None, *, max_examples: int = 4, seed: int = 0,
                                  examples=None, skip=()):
    """Checks `fn(inputs, window_shape, strides, padding, *, count_include_pad[,
    ceil_mode=True])` (default `lip_jax.average_pool`), `count_include_pad` False and
    True, on `strategies.pool_examples(with_logits=False)`; properties:

    - "reference": values and VJP equal `reference.average_pool`'s (PyTorch's rule for
      what counts);
    - "bounds": outputs lie within their window's min and max (stretched to 0 when
      padding counts);
    - "constant": without counting padding, a constant input stays constant;
    - "vmap", "variants": `jax.vmap` and chex's variants agree with `jax.jit`.
    """
    fn = _pooling(fn, ops.average_pool)

    def properties(ex):
        g, x = ex.geometry, ex.inputs
        cases = [Case(f"check_average_pool_properties (count_include_pad={i})", ex,
                      lambda x, i=i: fn(x, *g.args, count_include_pad=i, **g.kwargs),
                      lambda x, i=i: reference.value_and_pullback(
                          reference.average_pool, x, *g.args, count_include_pad=i, **g.kwargs),
                      ("inputs",)) for i in (False, True)]
        high = reference.max_pool(x, *g.args, **g.kwargs)
        low = -reference.max_pool(-x.astype(np.float64), *g.args, **g.kwargs)
        constant = np.full_like(x, 0.75)

        def bounds():
            _within_window(cases[0], cases[0].value(x), x)
            _within_window(cases[1], cases[1].value(x), x, low=np.minimum(low, 0),
                           high=np.maximum(high, 0), low_name="min(min, 0)",
                           high_name="max(max, 0)")

        return {
            "reference": lambda: [case.matches_reference(x) for case in cases],
            "bounds": bounds,
            "constant": lambda: cases[0].close(cases[0].value(constant),
                                               np.full(high.shape, 0.75), "constant: 0.75"),
            "vmap": lambda: [case.vmap_agrees(x) for case in cases],
            "variants": lambda: cases[ex.input_seed % 2].variants_agree(x),
        }

    examples = strategies.pool_examples(with_logits=False) if examples is None else examples
    run("check_average_pool_properties", examples, properties, max_examples, seed, skip)


def check_soft_pool_properties(fn=None, *, max_examples: int = 4, seed: int = 0,
                               examples=None, skip=()):
    """Checks `fn(inputs, window_shape, strides, padding[, ceil_mode=True])` (default
    `lip_jax.soft_pool`, LIP with logits = inputs) on
    `strategies.pool_examples(with_logits=False)`; properties:

    - "reference": values and VJP equal `reference.soft_pool`'s;
    - "bounds": each output lies between its window's average and its max (the weights
      `exp(x)` rise with x);
    - "vmap", "variants": `jax.vmap` and chex's variants agree with `jax.jit`.
    """
    fn = _pooling(fn, ops.soft_pool)

    def properties(ex):
        g, x = ex.geometry, ex.inputs
        case = Case("check_soft_pool_properties", ex, lambda x: fn(x, *g.args, **g.kwargs),
                    lambda x: reference.value_and_pullback(reference.soft_pool, x, *g.args,
                                                           **g.kwargs), ("inputs",))
        return {
            "reference": lambda: case.matches_reference(x),
            "bounds": lambda: _within_window(
                case, case.value(x), x, low=reference.average_pool(x, *g.args, **g.kwargs),
                low_name="average"),
            "vmap": lambda: case.vmap_agrees(x),
            "variants": lambda: case.variants_agree(x),
        }

    examples = strategies.pool_examples(with_logits=False) if examples is None else examples
    run("check_soft_pool_properties", examples, properties, max_examples, seed, skip)


BETAS = (1.0, 8.0, 64.0)


def check_tempered_max_pool_properties(fn=None, *, max_examples: int = 4, seed: int = 0,
                                       examples=None, skip=()):
    """Checks `fn(inputs, window_shape, strides, padding, beta=...[, ceil_mode=True])`
    (default `lip_jax.tempered_max_pool`, LIP with logits `beta * inputs`) on
    `strategies.pool_examples(with_logits=False)`; properties:

    - "reference": values and VJP equal `reference.tempered_max_pool`'s (beta 8);
    - "rising": outputs rise with beta (1, 8, 64) and lie within `(K - 1) / (e beta)`
      below the window max (K pixels a window);
    - "large_beta": beta 1e6 gives max pooling of `100 * inputs`;
    - "vmap", "variants": `jax.vmap` and chex's variants agree with `jax.jit`.
    """
    fn = _pooling(fn, ops.tempered_max_pool)

    def properties(ex):
        g, x = ex.geometry, ex.inputs
        cases = {b: Case(f"check_tempered_max_pool_properties (beta={b:g})", ex,
                         lambda x, b=b: fn(x, *g.args, beta=b, **g.kwargs),
                         lambda x, b=b: reference.value_and_pullback(
                             reference.tempered_max_pool, x, *g.args, beta=b, **g.kwargs),
                         ("inputs",)) for b in (*BETAS, 1e6)}
        big = (100 * x.astype(np.float64)).astype(x.dtype)

        def rising():
            previous = None
            for beta in BETAS:
                y = np.asarray(cases[beta].value(x)).astype(np.float64)
                _near_max(cases[beta], y, x, beta, "rising: near the max")
                if previous is not None:
                    _within_window(cases[beta], y, x, "rising: above a smaller beta's output",
                                   low=previous, low_name="smaller beta's output")
                previous = y

        return {
            "reference": lambda: cases[8.0].matches_reference(x),
            "rising": rising,
            "large_beta": lambda: _near_max(cases[1e6], cases[1e6].value(big), big, 1e6,
                                            "large_beta: 100 * inputs"),
            "vmap": lambda: cases[8.0].vmap_agrees(x),
            "variants": lambda: cases[8.0].variants_agree(x),
        }

    examples = strategies.pool_examples(with_logits=False) if examples is None else examples
    run("check_tempered_max_pool_properties", examples, properties, max_examples, seed, skip)
