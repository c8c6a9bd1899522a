"""Property tests: the special cases of LAN pooling, on random geometries (hypothesis)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings, strategies as st

from lip_jax import ops

settings.register_profile("lip", max_examples=15, deadline=None)
settings.load_profile("lip")


@st.composite
def geometries(draw, subsampling=False):
    """(input shape, window, strides, padding) for which pooling is well defined.

    With `subsampling`, windows fit in their strides and padding is VALID.
    """
    ndim = draw(st.integers(1, 2))
    spatial = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    window = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    strides = tuple(draw(st.integers(k if subsampling else 1, k + 1)) for k in window)
    padding = "VALID" if subsampling else draw(st.one_of(
        st.sampled_from(["VALID", "SAME"]),
        st.tuples(*[st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)) for k in window])))
    batch = draw(st.lists(st.integers(1, 2), max_size=2))
    shape = (*batch, *spatial, draw(st.integers(1, 3)))
    try:
        ops.pool_window(shape, window, strides, padding)
    except ValueError:
        assume(False)
    return shape, window, strides, padding


def _data(seed, shape):
    """x uniform in [-1, 1); logits normal, scale 3."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, shape, minval=-1.0), 3 * jax.random.normal(k2, shape)


def _flax_pool(pool, x, window, strides, padding, **kw):
    """flax.linen pools need exactly one batch dim."""
    n = len(window)
    flat = x.reshape(-1, *x.shape[x.ndim - n - 1:])
    out = pool(flat, window, strides, padding, **kw)
    return out.reshape(*x.shape[:x.ndim - n - 1], *out.shape[1:])


def jit_geometry(fn):
    """jit with the geometry (window, strides, padding) static: one compile per example."""
    return jax.jit(fn, static_argnums=(1, 2, 3))


@jit_geometry
def _uniform_cases(x, window, strides, padding):
    return (ops.lip_pool(x, jnp.zeros(()), window, strides, padding),
            ops.average_pool(x, window, strides, padding),
            _flax_pool(nn.avg_pool, x, window, strides, padding, count_include_pad=False))


@given(geometries(), st.integers(0, 2**16))
def test_uniform_logits_are_average_pooling_without_padding(geometry, seed):
    shape, *geom = geometry
    uniform, average, expected = _uniform_cases(_data(seed, shape)[0], *geom)
    np.testing.assert_allclose(uniform, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6)


@jit_geometry
def _window_extremes(x, window, strides, padding):
    return (_flax_pool(nn.max_pool, x, window, strides, padding),
            -_flax_pool(nn.max_pool, -x, window, strides, padding))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _lip(x, logits, window, strides, padding):
    return ops.lip_pool(x, logits, window, strides, padding)


@given(geometries(), st.integers(0, 2**16))
def test_output_lies_within_window_min_and_max(geometry, seed):
    shape, *geom = geometry
    x, logits = _data(seed, shape)
    out = _lip(x, logits, *geom)
    high, low = _window_extremes(x, *geom)
    assert bool(jnp.all(out <= high + 1e-6)) and bool(jnp.all(out >= low - 1e-6))


BETAS = (1.0, 4.0, 16.0, 40.0)


@jit_geometry
def _tempered(x, window, strides, padding):
    return [ops.tempered_max_pool(x, window, strides, padding, beta=b) for b in BETAS]


@given(geometries(), st.integers(0, 2**16))
def test_tempered_max_pool_rises_to_max_pooling(geometry, seed):
    shape, *geom = geometry
    x, _ = _data(seed, shape)
    high, _ = _window_extremes(x, *geom)
    size = int(np.prod(geom[0]))
    previous = -jnp.inf
    for beta, out in zip(BETAS, _tempered(x, *geom)):
        assert bool(jnp.all(out >= previous - 1e-6)), "not non-decreasing in beta"
        assert bool(jnp.all(out <= high + 1e-6))
        assert bool(jnp.all(high - out <= (size - 1) / (np.e * beta) + 1e-6))
        previous = out


@given(geometries(subsampling=True), st.integers(0, 2**16))
def test_one_hot_weight_at_window_origin_is_strided_subsampling(geometry, seed):
    shape, window, strides, padding = geometry
    n = len(window)
    x, _ = _data(seed, shape)
    one_hot = jnp.zeros(strides).at[(0,) * n].set(1.0)
    weights = ops.periodic_weights(one_hot, shape[len(shape) - n - 1:-1])
    out = ops.lan_pool(x, weights, window, strides, padding)
    lead = len(shape) - n - 1
    expected = x[(Ellipsis,) + tuple(slice(0, o * s, s) for o, s in
                                     zip(out.shape[lead:lead + n], strides)) + (slice(None),)]
    np.testing.assert_array_equal(out, expected)


@given(geometries(), st.integers(0, 2**16), st.floats(-60, 60))
def test_shift_invariance(geometry, seed, shift):
    shape, *geom = geometry
    x, logits = _data(seed, shape)
    np.testing.assert_allclose(_lip(x, logits + shift, *geom), _lip(x, logits, *geom),
                               rtol=1e-4, atol=1e-5)


@given(geometry=geometries(), seed=st.integers(0, 2**16))
def test_tempered_max_pool_is_max_pooling_for_large_beta(geometry, seed):
    """Any input: a large beta gives each window its max (per-window shift, no 0/0); the
    bound (K - 1) / (e beta) is 6e-6 here, float32 rounding of x ~ 100 about 1e-5."""
    shape, window, strides, padding = geometry
    x = 100 * _data(seed, shape)[0]
    pooled = ops.tempered_max_pool(x, window, strides, padding, beta=1e6)
    np.testing.assert_allclose(pooled, _flax_pool(nn.max_pool, x, window, strides, padding),
                               rtol=0, atol=3e-5)
