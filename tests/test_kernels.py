"""The fused Pallas kernels (interpret mode on CPU) against the XLA graph.

Kept small: interpret mode runs each kernel program as traced JAX (seconds per call).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import ops
from lip_jax.testing import reference

P1 = ((1, 1), (1, 1))


def _randn(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def _value_and_grads(implementation, x, logits, geometry):
    cot = _randn(9, ops.lip_pool(x, logits, *geometry).shape)

    def loss(x, l):
        return jnp.vdot(cot, ops.lip_pool(x, l, *geometry, implementation=implementation)
                        .astype(jnp.float32))

    y = jax.jit(lambda x, l: ops.lip_pool(x, l, *geometry, implementation=implementation))(
        x, logits)
    return (y,) + jax.jit(jax.grad(loss, (0, 1)))(x, logits)


@pytest.mark.parametrize("shape, logit_features, geometry", [
    ((2, 7, 9, 6), 6, ((3, 3), (2, 2), P1)),                     # the models' k3/s2/p1
    ((2, 7, 9, 6), 3, ((2, 2), (2, 2), "VALID")),                # k2/s2/p0, grouped, odd
    ((1, 6, 5, 3), 1, ((3, 2), (1, 2), ((0, 2), (1, 0)))),       # shared, uneven pads
    ((3, 5, 5, 2), 2, ((3, 3), (1, 1), "SAME")),
])
def test_kernel_matches_xla_values_and_gradients(shape, logit_features, geometry):
    x = _randn(0, shape)
    logits = 3 * _randn(1, (*shape[:-1], logit_features))
    ours = _value_and_grads("pallas", x, logits, geometry)
    xla = _value_and_grads("xla", x, logits, geometry)
    for a, b in zip(ours, xla):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_broadcast_logits_and_batch_dims():
    x = _randn(0, (2, 1, 5, 6, 4))  # two batch dims
    for logits in (_randn(1, (4,)), _randn(1, (1, 5, 6, 1)), jnp.zeros(())):
        args = (x, logits, (2, 3), (2, 2), "SAME")
        np.testing.assert_allclose(ops.lip_pool(*args, implementation="pallas"),
                                   ops.lip_pool(*args, implementation="xla"), rtol=1e-5,
                                   atol=1e-6)
    no_batch = _randn(2, (5, 6, 4))
    np.testing.assert_allclose(
        ops.lip_pool(no_batch, no_batch, (3, 3), (2, 2), P1, implementation="pallas"),
        reference.lip_pool(no_batch, no_batch, (3, 3), (2, 2), P1), rtol=1e-5, atol=1e-6)


def test_kernel_bfloat16_accumulates_in_float32():
    x, logits = _randn(0, (2, 7, 7, 8)), ops.soft_gate(3 * _randn(1, (2, 7, 7, 8)))
    x16, l16 = x.astype(jnp.bfloat16), logits.astype(jnp.bfloat16)
    ours = _value_and_grads("pallas", x16, l16, ((3, 3), (2, 2), P1))
    xla = _value_and_grads("xla", x16, l16, ((3, 3), (2, 2), P1))
    for a, b in zip(ours, xla):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=2e-2,
                                   atol=2e-2)
    exact = reference.lip_pool(x16.astype(jnp.float32), l16.astype(jnp.float32), (3, 3), (2, 2), P1)
    np.testing.assert_allclose(ours[0].astype(jnp.float32), exact, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("implementation", ["pallas", "xla"])
def test_logits_spanning_200_are_exact_and_nan_stays_in_its_windows(implementation):
    x = _randn(0, (1, 7, 7, 2))
    logits = 100 * jnp.tanh(_randn(1, (1, 7, 7, 2)))
    logits = logits.at[0, 0, 0, 0].set(100.0).at[0, 6, 6, 0].set(-100.0)
    y, dx, dl = _value_and_grads(implementation, x, logits, ((3, 3), (2, 2), P1))
    np.testing.assert_allclose(y, reference.lip_pool(x, logits, (3, 3), (2, 2), P1), rtol=1e-5,
                               atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(dx))) and bool(jnp.all(jnp.isfinite(dl)))
    poisoned = ops.lip_pool(x, logits.at[0, 3, 3, 0].set(jnp.nan), (3, 3), (2, 2), P1,
                            implementation=implementation)
    nan = np.isnan(np.asarray(poisoned))
    expected = np.zeros_like(nan)
    expected[0, 1:3, 1:3, 0] = True  # the four windows that hold pixel (3, 3)
    np.testing.assert_array_equal(nan, expected)


def test_kernel_on_an_empty_batch():
    x = jnp.zeros((0, 5, 5, 3))
    y, dx, dl = _value_and_grads("pallas", x, x, ((3, 3), (2, 2), P1))
    assert y.shape == (0, 3, 3, 3) and dx.shape == dl.shape == x.shape


def test_unknown_implementation_is_refused_by_name():
    with pytest.raises(ValueError, match='implementation must be None, "xla" or "pallas"'):
        ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), (2, 2), implementation="triton")


def _uses_kernel(**kwargs):
    x = jnp.ones((2, 6, 6, 3))
    window = kwargs.pop("window", (2, 2))
    jaxpr = jax.make_jaxpr(lambda x: ops.lip_pool(x, x, window, **kwargs))(
        x if len(window) == 2 else x[..., 0, :])
    return "pallas_call" in str(jaxpr)


def test_default_picks_the_kernel_only_where_set_and_on_one_device(monkeypatch):
    assert jax.device_count() == 8  # tests/conftest.py
    assert _uses_kernel(implementation="pallas")
    assert not _uses_kernel(implementation="pallas", window=(2,))  # 1-D: the XLA graph
    assert not _uses_kernel()  # CPU default
    monkeypatch.setitem(ops.DEFAULT_IMPLEMENTATION, jax.default_backend(), "pallas")
    assert not _uses_kernel()  # several devices: GSPMD cannot split a pallas_call
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert _uses_kernel()
