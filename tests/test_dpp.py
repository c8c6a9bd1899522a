"""Detail-preserving pooling against a direct NumPy statement of the DPP paper's formula
(`lip_jax.testing.reference.dpp_pool`)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from lip_jax import average_pool, blur_pool, dpp_pool
from lip_jax import linen as L, nnx as N
from lip_jax.testing import reference

GEOMETRIES = [((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 2), (2, 2), "VALID"),
              ((3, 2), (1, 2), ((0, 1), (1, 0)))]


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("window, strides, padding", GEOMETRIES)
def test_dpp_equals_the_papers_formula(window, strides, padding, asymmetric):
    rng = np.random.default_rng(len(window) + strides[1])
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    alpha, lam = rng.uniform(0.1, 2, 3), rng.uniform(0.3, 3, 3)
    out = dpp_pool(x, alpha, lam, window, strides, padding, asymmetric=asymmetric)
    expected = reference.dpp_pool(x, alpha, lam, window, strides, padding, asymmetric)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)


def test_large_alpha_or_zero_lambda_is_average_pooling():
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
    geometry = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    average = average_pool(x, *geometry)
    np.testing.assert_allclose(dpp_pool(x, 1e6, 1.0, *geometry), average, atol=1e-5)
    np.testing.assert_allclose(dpp_pool(x, 0.5, 0.0, *geometry), average, atol=1e-5)
    asym = dpp_pool(x, 0.0, 4.0, *geometry, asymmetric=True)
    assert float(jnp.mean(asym - average)) > 0.1  # rewards pixels above the window mean


def test_gradients_are_exact_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2), jnp.float64)
        f = lambda x, a, l: dpp_pool(x, a, l, (3, 3), (2, 2), ((1, 1), (1, 1)), True)
        check_grads(f, (x, jnp.array([0.5, 1.0]), jnp.array([1.5, 2.0])),
                    order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_blur_pool_is_a_normalised_binomial_filter():
    x = jax.random.normal(jax.random.key(0), (1, 6, 5, 2))
    out = blur_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    k = np.outer([1, 2, 1], [1, 2, 1])
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    mp = np.pad(np.ones((6, 5)), 1)
    for i, j in itertools.product(range(3), range(3)):
        patch = xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        mask = mp[2 * i:2 * i + 3, 2 * j:2 * j + 3] * k
        expected = np.tensordot(mask, patch, ((0, 1), (0, 1))) / mask.sum()
        np.testing.assert_allclose(out[0, i, j], expected, rtol=1e-5, atol=1e-6)


def test_empty_batch():
    x = jnp.zeros((0, 6, 6, 3))
    assert dpp_pool(x, 1.0, 1.0, (2, 2), (2, 2)).shape == (0, 3, 3, 3)
    assert blur_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).shape == (0, 3, 3, 3)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_linen_and_nnx_layers_agree(asymmetric):
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
    linen = L.DPP(asymmetric=asymmetric)
    params = linen.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p + jnp.linspace(-0.5, 0.5, p.size), params)
    graph, state = nnx.split(N.DPP(4, asymmetric=asymmetric))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(state)) == jax.tree.map(jnp.shape, params)
    nnx.replace_by_pure_dict(state, params)
    expected = linen.apply({"params": params}, x)
    np.testing.assert_allclose(nnx.merge(graph, state)(x), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, dpp_pool(x, np.exp(params["log_alpha"]),
                                                  np.exp(params["log_lambda"]), (3, 3),
                                                  (2, 2), ((1, 1), (1, 1)), asymmetric),
                               rtol=1e-6, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(linen.apply({"params": p}, x) ** 2))(params)
    assert all(float(jnp.abs(g).min()) > 0 for g in jax.tree.leaves(grads))


def test_bad_parameters_and_geometry_are_named():
    x = jnp.zeros((2, 6, 6, 4))
    with pytest.raises(ValueError, match=r"alpha must be a scalar or one value per channel "
                                         r"\(4\), got shape \(3,\)"):
        N.DPP(3)(x)
    with pytest.raises(ValueError, match=r"lam must be .* got shape \(2, 4\)"):
        dpp_pool(x, 1.0, jnp.ones((2, 4)), (2, 2))
    with pytest.raises(TypeError, match="window_shape must be a sequence of ints, got 3"):
        N.DPP(4, window_shape=3)(x)
    with pytest.raises(ValueError, match="num_features must be a positive int, got -1"):
        N.DPP(-1)
    with pytest.raises(TypeError, match="eps must be an array, got str"):
        dpp_pool(x, 1.0, 1.0, (2, 2), eps="tiny")
    with pytest.raises(TypeError, match="asymmetric must be a bool, got 'yes'"):
        dpp_pool(x, 1.0, 1.0, (2, 2), asymmetric="yes")
    with pytest.raises(ValueError, match="padding must be .* int pairs, got 1"):
        N.LIP(jnp.zeros_like, padding=1)(x)
