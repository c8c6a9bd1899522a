"""Exact values and float32 gradients at any finite logit, on every implementation.

The reference is float64 autodiff of each window's own softmax (`jax.nn.softmax`,
shifted by the window maximum), written here independently of the library.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import ops

P1 = ((1, 1), (1, 1))
IMPLEMENTATIONS = ["xla", "pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu"]


def _window_softmax_pool(x, l, window, strides, pads):
    """`(N, H, W, C)` inputs and logits: each window's softmax(l)-weighted mean of x."""
    (kh, kw), (sh, sw), ((ph, ph_hi), (pw, pw_hi)) = window, strides, pads
    n, h, w, c = x.shape
    rows = []
    for i in range((h + ph + ph_hi - kh) // sh + 1):
        cols = []
        for j in range((w + pw + pw_hi - kw) // sw + 1):
            r = slice(max(i * sh - ph, 0), min(i * sh - ph + kh, h))
            q = slice(max(j * sw - pw, 0), min(j * sw - pw + kw, w))
            lw = l[:, r, q].reshape(n, -1, c)
            cols.append(jnp.sum(jax.nn.softmax(lw, axis=1) * x[:, r, q].reshape(n, -1, c), 1))
        rows.append(jnp.stack(cols, 1))
    return jnp.stack(rows, 1)


def _grads(pool, x, l, cot):
    return jax.grad(lambda x, l: jnp.vdot(cot, pool(x, l)), (0, 1))(x, l)


def _relative_error(got, want):
    scale = float(jnp.max(jnp.abs(want)))
    return float(jnp.max(jnp.abs(got.astype(jnp.float64) - want))) / max(scale, 1e-300)


LOGITS = {
    "N(0,1) + 1e4": lambda z: z + 1e4,
    "N(0,1) + 1e6": lambda z: z + 1e6,
    "1e12 N(0,1)": lambda z: 1e12 * z,
    "+-1e12 + N(0,1)": lambda z: jnp.where(z > 0, 1e12, -1e12) + z,
    "rows 1e6 apart": lambda z: z.at[:, :4].add(-1e6),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(LOGITS))
def test_float32_gradients_match_float64_at_large_logits(implementation, name):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 9, 8, 3))
    logits = LOGITS[name](jax.random.normal(keys[1], x.shape))  # float32, as a model has
    cot = jax.random.normal(keys[2], (2, 5, 4, 3))
    geometry = ((3, 3), (2, 2), P1)
    got = _grads(lambda x, l: ops.lip_pool(x, l, *geometry, implementation=implementation),
                 x, logits, cot)
    with jax.enable_x64(True):
        x64, l64, cot64 = (jnp.asarray(a, jnp.float64) for a in (x, logits, cot))
        want = _grads(lambda x, l: _window_softmax_pool(x, l, *geometry), x64, l64, cot64)
        y = ops.lip_pool(x, logits, *geometry, implementation=implementation)
        np.testing.assert_allclose(y, _window_softmax_pool(x64, l64, *geometry), rtol=1e-5,
                                   atol=1e-5)
        for g, w in zip(got, want):
            assert g.dtype == jnp.float32
            assert float(jnp.max(jnp.abs(w))) == 0 or _relative_error(g, w) < 1e-4, name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("magnitude", [1e6, 1e7, 1e12])
def test_equal_huge_logits_give_the_average_and_its_gradient(implementation, magnitude):
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    logits = jnp.full(x.shape, magnitude)
    dx, dl = jax.grad(lambda x, l: ops.lip_pool(x, l, (2, 2), implementation=implementation)
                      .sum(), (0, 1))(x, logits)
    np.testing.assert_allclose(dx.ravel(), [0.25] * 4, rtol=1e-6)
    np.testing.assert_allclose(dl.ravel(), [-0.375, -0.125, 0.125, 0.375], rtol=1e-5)


def test_tempered_max_pool_gradient_at_beta_1e6_is_max_poolings():
    x = jnp.array([7.0, 7.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: ops.tempered_max_pool(x, (2, 2), beta=1e6).sum())(x)
    np.testing.assert_allclose(grad.ravel(), [0.5, 0.5, 0.0, 0.0], atol=1e-7)


def test_an_images_result_does_not_depend_on_the_rest_of_its_batch():
    """The XLA graph picks its form per image: a neighbour that needs the per-window form
    leaves an ordinary image's value bit for bit as it was, and its gradients (compiled
    into another graph) to rounding."""
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (2, 7, 7, 3))
    logits = 12 * jax.nn.sigmoid(jax.random.normal(keys[1], x.shape))

    def value_and_grads(x, l):
        return jax.value_and_grad(lambda x, l: jnp.sum(
            ops.lip_pool(x, l, (3, 3), (2, 2), P1) ** 2), (0, 1))(x, l)

    _, (dx, dl) = value_and_grads(x, logits)
    y = ops.lip_pool(x, logits, (3, 3), (2, 2), P1)
    wide = logits.at[1].multiply(1e4)  # image 1 now spans ~1e5
    _, (dx_wide, dl_wide) = value_and_grads(x, wide)
    np.testing.assert_array_equal(ops.lip_pool(x, wide, (3, 3), (2, 2), P1)[0], y[0])
    np.testing.assert_allclose(dx_wide[0], dx[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dl_wide[0], dl[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bfloat16_gradients_are_as_accurate_as_the_xla_graphs(implementation):
    keys = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(keys[0], (2, 9, 8, 16)).astype(jnp.bfloat16)
    logits = ops.soft_gate(3 * jax.random.normal(keys[1], x.shape)).astype(jnp.bfloat16)
    cot = jax.random.normal(keys[2], (2, 5, 4, 16))
    geometry = ((3, 3), (2, 2), P1)

    def pool(implementation):
        return lambda x, l: ops.lip_pool(x, l, *geometry, implementation=implementation
                                         ).astype(jnp.float32)

    got = _grads(pool(implementation), x, logits, cot)
    xla = _grads(pool("xla"), x, logits, cot)
    with jax.enable_x64(True):
        x64, l64, cot64 = (jnp.asarray(a, jnp.float64) for a in (x, logits, cot))
        want = _grads(lambda x, l: _window_softmax_pool(x, l, *geometry), x64, l64, cot64)
        for g, base, w in zip(got, xla, want):
            assert g.dtype == jnp.bfloat16
            assert _relative_error(g, w) <= 1.05 * _relative_error(base, w) + 1e-6
            assert _relative_error(g, w) < 1e-2
