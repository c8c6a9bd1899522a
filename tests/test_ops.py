"""lip_pool / lan_pool: reference values, gradients, dtypes, layouts and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lip_jax import ops
from lip_jax.testing import reference

P1 = ((1, 1), (1, 1))


def _randn(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def naive_lip(x, logits, window_shape, strides, padding):
    """The official formulation, differentiated by plain autodiff."""
    window = ops.pool_window(x.shape, window_shape, strides, padding)
    w = jnp.broadcast_to(jnp.exp(logits), x.shape)
    return ops.window_sum(w * x, window) / ops.window_sum(w, window)


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 9, 3), (3,), (2,), "SAME"),                       # 1-D
    ((9, 3), (2,), (2,), "VALID"),                         # 1-D, no batch dim
    ((2, 7, 8, 3), (3, 3), (2, 2), P1),                    # 2-D, official k3/s2/p1
    ((5, 6, 2), (2, 3), (1, 2), ((0, 1), (2, 1))),         # 2-D, no batch, uneven pads
    ((2, 3, 7, 6, 2), (3, 3), (2, 3), "SAME"),             # two batch dims
    ((1, 5, 6, 7, 2), (3, 2, 3), (2, 2, 2), ((1, 1), (0, 0), (1, 0))),  # 3-D
])
def test_matches_numpy_reference(shape, window, strides, padding):
    x, logits = _randn(0, shape), 3 * _randn(1, shape)
    out = ops.lip_pool(x, logits, window, strides, padding)
    np.testing.assert_allclose(out, reference.lip_pool(x, logits, window, strides, padding),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("logit_features", [1, 2, 6])
def test_shared_and_grouped_logits(logit_features):
    x, logits = _randn(0, (2, 7, 7, 6)), _randn(1, (2, 7, 7, logit_features))
    expanded = jnp.repeat(logits, 6 // logit_features, axis=-1)
    np.testing.assert_allclose(ops.lip_pool(x, logits, (3, 3), (2, 2), P1),
                               reference.lip_pool(x, expanded, (3, 3), (2, 2), P1), rtol=1e-5,
                               atol=1e-6)
    grad = jax.grad(lambda l: jnp.sum(ops.lip_pool(x, l, (3, 3), (2, 2), P1) ** 2))
    np.testing.assert_allclose(
        grad(logits),
        jax.grad(lambda e: jnp.sum(naive_lip(x, e, (3, 3), (2, 2), P1) ** 2))(expanded)
        .reshape(2, 7, 7, logit_features, -1).sum(-1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("logit_shape", [(2, 7, 9, 4), (2, 7, 9, 1), (4,), (1, 7, 9, 4), ()])
@pytest.mark.parametrize("window, strides, padding",
                         [((3, 3), (2, 2), P1), ((2, 2), (2, 2), "VALID"), ((3, 2), None, "SAME")])
def test_custom_vjp_equals_autodiff_of_naive_formula(logit_shape, window, strides, padding):
    x, logits = _randn(0, (2, 7, 9, 4)), 2 * _randn(1, logit_shape)
    cot = _randn(2, ops.lip_pool(x, logits, window, strides, padding).shape)

    def loss(pool):
        return lambda x, l: jnp.vdot(cot, pool(x, l, window, strides, padding))

    ours = jax.grad(loss(ops.lip_pool), (0, 1))(x, logits)
    naive = jax.grad(loss(naive_lip), (0, 1))(x, logits)
    for a, b in zip(ours, naive):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: logit ranges over 60, per-window form
def test_check_grads_second_order(scale):
    with jax.enable_x64(True):
        x = _randn(0, (1, 5, 6, 2), jnp.float64)
        logits = scale * _randn(1, (1, 5, 6, 2), jnp.float64)
        pool = lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1)
        jax.test_util.check_grads(pool, (x, logits), order=2, modes=["rev"], atol=1e-7,
                                  rtol=1e-7)
        assert pool(x, logits).dtype == jnp.float64


class JitVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree_with_the_reference(self):
        x, logits = _randn(0, (2, 15, 15, 3)), 4 * _randn(1, (2, 15, 15, 3))

        def loss(pool):
            return lambda x, l: jnp.sum(jnp.sin(pool(x, l, (5, 5), (3, 3), "SAME")))

        value, grads = self.variant(jax.value_and_grad(loss(ops.lip_pool), (0, 1)))(x, logits)
        np.testing.assert_allclose(value, np.sum(np.sin(
            reference.lip_pool(x, logits, (5, 5), (3, 3), "SAME"))), rtol=1e-5)
        chex.assert_trees_all_close(grads, jax.grad(loss(naive_lip), (0, 1))(x, logits),
                                    rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_with_large_logits(dtype):
    x = _randn(0, (2, 8, 8, 4))
    logits = ops.soft_gate(4 * _randn(1, (2, 8, 8, 4)))  # in (0, 12): exp overflows fp16
    assert float(logits.max()) > 11
    expected = ops.lip_pool(x.astype(dtype).astype(jnp.float32), logits, (3, 3), (2, 2), P1)
    out = ops.lip_pool(x.astype(dtype), logits.astype(dtype), (3, 3), (2, 2), P1)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    tol = 0.05 if dtype == jnp.bfloat16 else 0.01  # logits rounded to dtype: w off by e^(eps*12)
    np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=tol, rtol=tol)
    grads = jax.grad(lambda x, l: jnp.sum(ops.lip_pool(x, l, (3, 3), (2, 2), P1)
                                          .astype(jnp.float32)), (0, 1))(
        x.astype(dtype), logits.astype(dtype))
    assert [g.dtype for g in grads] == [dtype, dtype]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_huge_logits_are_shift_invariant():
    x, logits = _randn(0, (2, 8, 8, 3)), _randn(1, (2, 8, 8, 3))
    base = ops.lip_pool(x, logits, (3, 3), (2, 2), P1)
    for shift in (-300.0, 100.0, 1000.0):  # float32 rounds logits + 1000 by up to 3e-5
        np.testing.assert_allclose(ops.lip_pool(x, logits + shift, (3, 3), (2, 2), P1), base,
                                   rtol=2e-4, atol=2e-4)
    grads = jax.grad(lambda l: jnp.sum(ops.lip_pool(x, l, (3, 3), (2, 2), P1)))(logits + 1e4)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_lan_pool_with_uniform_and_positional_weights():
    x = _randn(0, (2, 9, 8, 3))
    np.testing.assert_allclose(
        ops.lan_pool(x, jnp.ones(()), (3, 3), (2, 2), P1),
        jax.numpy.asarray(reference.lip_pool(x, 0.0, (3, 3), (2, 2), P1)), rtol=1e-5, atol=1e-6)
    one_hot = jnp.zeros((3, 2)).at[0, 0].set(1.0)
    weights = ops.periodic_weights(one_hot, (9, 8))
    np.testing.assert_array_equal(ops.lan_pool(x, weights, (3, 2), (3, 2)), x[:, ::3, ::2])
    grad = jax.grad(lambda w: jnp.sum(ops.lan_pool(x, w, (3, 2), (3, 2))))(weights)
    assert grad.shape == weights.shape


def test_soft_gate_range_and_dtype():
    z = jnp.linspace(-50, 50, 101, dtype=jnp.bfloat16)
    gate = ops.soft_gate(z)
    assert gate.dtype == jnp.float32
    assert float(gate.min()) >= 0 and float(gate.max()) <= 12
    np.testing.assert_allclose(ops.soft_gate(jnp.zeros(3)), 6.0)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.lip_pool(jnp.ones((4, 4)), jnp.ones((4, 4)), (3, 3)), ValueError, "rank 2"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones((1, 4, 4, 2)), (2, 2)), ValueError,
     r"logits of shape \(1, 4, 4, 2\) do not broadcast"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones((1, 5, 4, 3)), (2, 2)), ValueError,
     "do not broadcast"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3), jnp.int32), jnp.ones(3), (2, 2)), TypeError,
     "inputs must have a floating dtype, got int32"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3, jnp.complex64), (2, 2)),
     TypeError, "logits must have a floating dtype"),
    (lambda: ops.lan_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3, jnp.complex64), (2, 2)),
     TypeError, "weights must have a floating dtype"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), ceil_mode="yes"),
     TypeError, "ceil_mode must be a bool"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (0, 2)), ValueError,
     "window_shape must be 2 positive ints"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), 3), TypeError,
     "window_shape must be a sequence"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), (2,)), ValueError,
     "strides must be 2 positive ints"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), None, "same"),
     ValueError, "padding must be"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), None, ((1, 1),)),
     ValueError, "padding needs 2 non-negative"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), None, ((1, -1), (0, 0))),
     ValueError, "padding needs 2 non-negative"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (5, 2)), ValueError,
     "window 5 is larger than spatial dim 0 of size 4"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), (1, 1), ((2, 0), (0, 0))),
     ValueError, "leaves windows that hold padding only"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), jnp.ones(3), (2, 2), (2, 2), ((0, 2), (0, 0))),
     ValueError, "leaves windows that hold padding only"),
    (lambda: ops.lip_pool(jnp.ones((1, 4, 4, 3)), None, (2, 2)), TypeError,
     "logits must be an array, got NoneType"),
    (lambda: ops.tempered_max_pool(jnp.ones((1, 4, 4, 3)), (2, 2), beta=float("inf")),
     ValueError, "beta must be finite, got inf"),
    (lambda: ops.tempered_max_pool(jnp.ones((1, 4, 4, 3)), (2, 2), beta="large"), TypeError,
     "beta must be an array, got str"),
    (lambda: ops.average_pool(jnp.ones((1, 4, 4, 3)), (2, 2), count_include_pad="no"),
     TypeError, "count_include_pad must be a bool, got 'no'"),
    (lambda: ops.soft_gate(jnp.ones(3), coeff="12"), TypeError, "coeff must be an array"),
    (lambda: ops.periodic_weights(jnp.eye(2), (-4, 4)), ValueError,
     r"spatial_shape must be 2 positive ints, got \(-4, 4\)"),
    (lambda: ops.periodic_weights(jnp.eye(2), (4, 4), offset="00"), TypeError,
     "offset must be ints"),
    (lambda: ops.periodic_weights(jnp.eye(2), (7,)), ValueError,
     r"pattern of shape \(2, 2\), spatial_shape \(7,\) and offset \(0, 0\) need one entry"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_window_sum_is_reduce_window_add_with_zero_padding():
    x = jnp.arange(12.0).reshape(1, 3, 4, 1)
    window = ops.pool_window(x.shape, (2, 2), (1, 1), P1)
    expected = lax.reduce_window(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 0.0, lax.add,
                                 (1, 2, 2, 1), (1, 1, 1, 1), "VALID")
    np.testing.assert_array_equal(ops.window_sum(x, window), expected)


def test_forward_mode_jvp_jacfwd_and_hessian_vector_products():
    x, logits = _randn(0, (1, 5, 6, 2)), 2 * _randn(1, (1, 5, 6, 2))
    pool = lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1)
    naive = lambda x, l: naive_lip(x, l, (3, 3), (2, 2), P1)
    tangents = (_randn(2, x.shape), _randn(3, x.shape))
    chex.assert_trees_all_close(jax.jvp(pool, (x, logits), tangents),
                                jax.jvp(naive, (x, logits), tangents), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(pool, 1)(x, logits), jax.jacrev(pool, 1)(x, logits),
                               rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda l: jnp.sum(jnp.sin(f(x, l)))
    hvp = lambda f: jax.jvp(jax.grad(loss(f)), (logits,), (tangents[1],))[1]
    np.testing.assert_allclose(hvp(pool), hvp(naive), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("modes", [["fwd"], ["rev"]])
@pytest.mark.parametrize("scale", [1.0, 80.0])  # 80: range > FAST_LOGIT_RANGE, per window
def test_check_grads_both_forms_both_modes(modes, scale):
    with jax.enable_x64(True):
        x = _randn(0, (1, 5, 6, 2), jnp.float64)
        logits = scale * _randn(1, (1, 5, 6, 2), jnp.float64)
        pool = lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1)
        jax.test_util.check_grads(pool, (x, logits), order=2, modes=modes, atol=1e-6,
                                  rtol=1e-6, eps=1e-4)


def test_wide_logit_range_is_exact_with_finite_gradients():
    """Logits spanning 200: each window's own shift (a global one gives 0/0)."""
    x, logits = _randn(0, (2, 7, 8, 3)), 50 * _randn(1, (2, 7, 8, 3))
    assert float(logits.max() - logits.min()) > 200
    np.testing.assert_allclose(ops.lip_pool(x, logits, (3, 3), (2, 2), P1),
                               reference.lip_pool(x, logits, (3, 3), (2, 2), P1), rtol=1e-5,
                               atol=1e-5)
    with jax.enable_x64(True):  # float64 autodiff of the naive formula is exact here
        x64, l64 = (np.asarray(a, np.float64) for a in (x, logits))
        expected = jax.grad(lambda x, l: jnp.sum(jnp.sin(naive_lip(x, l, (3, 3), (2, 2), P1))),
                            (0, 1))(x64, l64)
    grads = jax.grad(lambda x, l: jnp.sum(jnp.sin(ops.lip_pool(x, l, (3, 3), (2, 2), P1))),
                     (0, 1))(x, logits)
    for a, b in zip(grads, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_issue_examples_no_longer_nan():
    ramp = jnp.arange(9.0).reshape(1, 3, 3, 1)
    np.testing.assert_allclose(ops.tempered_max_pool(ramp, (2, 2), beta=22.0)[..., 0],
                               [[[4.0, 5.0], [7.0, 8.0]]], atol=1e-6)
    spike = jnp.zeros((1, 7, 7, 1)).at[0, 0, 0, 0].set(90.0)
    np.testing.assert_allclose(ops.lip_pool(jnp.ones((1, 7, 7, 1)), spike, (2, 2), (1, 1)), 1.0)


@pytest.mark.parametrize("op", [
    lambda x: ops.lip_pool(x, x, (3, 3), (2, 2), P1),
    lambda x: ops.lan_pool(x, jnp.ones(()), (2, 2), (2, 2)),
    lambda x: ops.average_pool(x, (2, 2), (2, 2)),
    lambda x: ops.soft_pool(x, (2, 2)),
    lambda x: ops.tempered_max_pool(x, (2, 2), (2, 2)),
    lambda x: ops.window_share(x, (2, 2), (2, 2)),
    lambda x: ops.lip_pool(x, x[..., :1], (2, 2), (2, 2)),  # shared logits
])
def test_empty_batch_gives_empty_result_and_gradient(op):
    x = jnp.zeros((0, 5, 5, 2))
    assert op(x).shape[0] == 0
    assert jax.grad(lambda x: jnp.sum(op(x)))(x).shape == x.shape


@pytest.mark.parametrize("kwargs, match", [
    (dict(window_shape=(1.5, 2)), "window_shape must be a sequence of ints"),
    (dict(window_shape=(2, 2), strides=(2.9, 2)), "strides must be a sequence of ints"),
    (dict(window_shape=("33", 2)), "window_shape must be a sequence of ints"),
    (dict(window_shape=(2, 2), padding=((1.0, 1), (0, 0))), "padding must be"),
])
def test_non_integer_geometry_is_refused_by_name(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), **kwargs)
    assert ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), (np.int64(2), 2)).shape == (
        1, 3, 3, 1)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_batch_sharded_gradients_in_both_forms(axis_type):
    """Data-parallel jit: a batch sharded over 8 devices, logits spanning ~1000 (the
    per-window form, which scans over images only when the batch is not explicitly
    sharded) and ~3 (the image-wide form)."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(AxisType, axis_type),))
    x = _randn(0, (8, 5, 5, 2))
    grad = jax.jit(jax.grad(lambda x, l: jnp.sum(ops.lip_pool(x, l, (3, 3), (2, 2), P1) ** 2),
                            (0, 1)))
    for scale in (1.0, 300.0):
        logits = scale * _randn(1, x.shape)
        expected = grad(x, logits)
        with jax.set_mesh(mesh):
            sharded = [jax.device_put(a, NamedSharding(mesh, PartitionSpec("data")))
                       for a in (x, logits)]
            chex.assert_trees_all_close(grad(*sharded), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, window, strides, padding, scale", [
    ((2, 7, 8, 3), (3, 3), (2, 2), P1, 3.0),              # official k3/s2/p1, odd size
    ((2, 7, 7, 2), (2, 2), (2, 2), "VALID", 3.0),         # last row and column uncovered
    ((1, 9, 2), (3,), (1,), "SAME", 3.0),                 # 1-D, overlapping
    ((2, 6, 5, 2), (3, 3), (2, 2), "SAME", 200.0),        # range far beyond exp's
])
def test_window_share_matches_numpy_reference(shape, window, strides, padding, scale):
    logits = scale * _randn(0, shape)
    share = ops.window_share(logits, window, strides, padding)
    assert share.shape == shape and bool(jnp.all(jnp.isfinite(share)))
    np.testing.assert_allclose(share, reference.window_share(logits, window, strides, padding),
                               rtol=1e-5, atol=1e-6)


def test_vmap_keeps_the_form_choice_one_cond():
    """Under `vmap` on one device the XLA graph still takes one branch (a batched
    predicate would make the cond a select of both, the mixed form computed every time);
    an example whose logits span 300 still gets its exact per-window result."""
    x = _randn(0, (4, 1, 7, 9, 3))
    logits = _randn(1, x.shape).at[2, 0, 0, 0, 0].set(300.0)

    def pool(x, l):
        return ops.lip_pool(x, l, (3, 3), (2, 2), P1, implementation="xla")

    jaxpr = str(jax.make_jaxpr(jax.vmap(jax.grad(lambda x, l: pool(x, l).sum(), (0, 1))))(
        x, logits))
    assert "cond[" in jaxpr
    for l in (logits.at[2].set(0.0), logits):
        y = jax.vmap(pool)(x, l)
        np.testing.assert_allclose(y, jnp.stack([pool(a, b) for a, b in zip(x, l)]), rtol=1e-6,
                                   atol=1e-6)
        np.testing.assert_allclose(y, reference.lip_pool(x, l, (3, 3), (2, 2), P1), rtol=1e-5,
                                   atol=1e-5)
