"""The fused Pallas kernels, GPU (Triton and Mosaic GPU) and TPU (Mosaic), in interpret
mode on CPU (the Mosaic ones with Mosaic's TPU and GPU interpreters), against the XLA
graph.

Kept small: interpret mode runs each kernel program as traced JAX (seconds per call).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import ops, pallas_tpu
from lip_jax.testing import reference

P1 = ((1, 1), (1, 1))
KERNELS = ["pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu"]


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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape, logit_features, geometry", [
    ((2, 7, 9, 6), 6, ((3, 3), (2, 2), P1)),                     # the models' k3/s2/p1
    ((2, 7, 9, 6), 3, ((2, 2), (2, 2), "VALID")),                # k2/s2/p0, grouped, odd
    ((1, 6, 5, 3), 1, ((3, 2), (1, 2), ((0, 2), (1, 0)))),       # shared, uneven pads
    ((3, 5, 5, 2), 2, ((3, 3), (1, 1), "SAME")),
])
def test_kernel_matches_xla_values_and_gradients(kernel, shape, logit_features, geometry):
    x = _randn(0, shape)
    logits = 3 * _randn(1, (*shape[:-1], logit_features))
    ours = _value_and_grads(kernel, x, logits, geometry)
    xla = _value_and_grads("xla", x, logits, geometry)
    for a, b in zip(ours, xla):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_broadcast_logits_and_batch_dims(kernel):
    x = _randn(0, (2, 1, 5, 6, 4))  # two batch dims
    for logits in (_randn(1, (4,)), _randn(1, (1, 5, 6, 1)), jnp.zeros(())):
        args = (x, logits, (2, 3), (2, 2), "SAME")
        np.testing.assert_allclose(ops.lip_pool(*args, implementation=kernel),
                                   ops.lip_pool(*args, implementation="xla"), rtol=1e-5,
                                   atol=1e-6)
    no_batch = _randn(2, (5, 6, 4))
    np.testing.assert_allclose(
        ops.lip_pool(no_batch, no_batch, (3, 3), (2, 2), P1, implementation=kernel),
        reference.lip_pool(no_batch, no_batch, (3, 3), (2, 2), P1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_bfloat16_accumulates_in_float32(kernel):
    x, logits = _randn(0, (2, 7, 7, 8)), ops.soft_gate(3 * _randn(1, (2, 7, 7, 8)))
    x16, l16 = x.astype(jnp.bfloat16), logits.astype(jnp.bfloat16)
    ours = _value_and_grads(kernel, x16, l16, ((3, 3), (2, 2), P1))
    xla = _value_and_grads("xla", x16, l16, ((3, 3), (2, 2), P1))
    for a, b in zip(ours, xla):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=2e-2,
                                   atol=2e-2)
    exact = reference.lip_pool(x16.astype(jnp.float32), l16.astype(jnp.float32), (3, 3),
                               (2, 2), P1)
    np.testing.assert_allclose(ours[0].astype(jnp.float32), exact, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("implementation", [*KERNELS, "xla"])
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


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_under_vmap(kernel):
    """`vmap` folds the vmapped dim into each kernel call's batch, also where only the
    logits are vmapped."""
    x, logits = _randn(0, (2, 3, 5, 6, 4)), _randn(1, (2, 3, 5, 6, 2))

    def grads(implementation):
        def loss(x, l):
            return jnp.sum(ops.lip_pool(x, l, (3, 3), (2, 2), P1,
                                        implementation=implementation) ** 2)
        return (jax.vmap(jax.value_and_grad(loss, (0, 1)))(x, logits),
                jax.vmap(jax.grad(loss, 1), (None, 0))(x[0], logits))

    ours, xla = (jax.jit(grads, static_argnums=0)(i) for i in (kernel, "xla"))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_second_derivatives_are_the_xla_graphs(kernel):
    """A gradient of a gradient (a gradient penalty) and a Hessian-vector product (forward
    over reverse, as `jax.hessian`) run the kernel once and differentiate the XLA graph;
    forward mode alone is refused."""
    x, logits = _randn(0, (2, 5, 6, 4)), 3 * _randn(1, (2, 5, 6, 2))

    def pool(implementation, x, l):
        return ops.lip_pool(x, l, (3, 3), (2, 2), ((1, 1), (0, 1)),
                            implementation=implementation)

    def penalised(implementation, x, l):
        value, dx = jax.value_and_grad(lambda x: jnp.sum(pool(implementation, x, l) ** 2))(x)
        return value + jnp.sum(dx ** 2)

    def second(implementation):
        loss = functools.partial(penalised, implementation)
        hvp = jax.jvp(jax.grad(lambda l: jnp.sum(pool(implementation, x, l) ** 2)), (logits,),
                      (_randn(2, logits.shape),))[1]
        return jax.grad(loss, (0, 1))(x, logits), hvp

    ours, xla = (jax.jit(second, static_argnums=0)(i) for i in (kernel, "xla"))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(functools.partial(pool, kernel, x), (logits,), (logits,))


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_on_an_empty_batch(kernel):
    x = jnp.zeros((0, 5, 5, 3))
    y, dx, dl = _value_and_grads(kernel, x, x, ((3, 3), (2, 2), P1))
    assert y.shape == (0, 3, 3, 3) and dx.shape == dl.shape == x.shape


@pytest.mark.parametrize("shape, geometry", [
    ((2, 9, 8, 6), ((3, 3), (2, 2), P1)),                      # halo row below each band
    ((1, 7, 6, 4), ((3, 3), (1, 1), "SAME")),                  # two halo rows, stride 1
    ((1, 11, 6, 4), ((5, 3), (2, 1), ((2, 1), (1, 1)))),       # tall window, uneven pads
])
def test_tpu_kernel_in_one_row_bands(monkeypatch, shape, geometry):
    """Bands of one row (a tiny VMEM budget): every band reads its halo rows from the
    next bands' one-row blocks, and the last band is partial."""
    monkeypatch.setattr(pallas_tpu, "VMEM_BUDGET", 1)
    x, logits = _randn(0, shape), 3 * _randn(1, shape)
    for a, b in zip(_value_and_grads("pallas_tpu", x, logits, geometry),
                    _value_and_grads("xla", x, logits, geometry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# platform -> (its jax.export target, the custom call of each of its kernels)
LOWERED = {"tpu": ("tpu", "tpu_custom_call"), "gpu": ("cuda", "custom_call @mosaic_gpu")}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape, logit_features", [
    ((8, 112, 112, 64), 64),     # LIP-ResNet-50's stem LIP
    ((8, 56, 56, 256), 256),     # a stage's shortcut LIP
    ((8, 28, 28, 512), 1),       # shared logits
    ((2, 7, 9, 5), 5),           # odd sizes
])
@pytest.mark.parametrize("kernel, platform", [("tpu", "tpu"), ("mosaic_gpu", "gpu")])
def test_mosaic_kernels_lower_for_their_hardware(monkeypatch, kernel, platform, dtype, shape,
                                                 logit_features):
    """Exported from this CPU for TPU (Pallas checks every block against the (8, 128)
    tiling) and for CUDA (TMA copies, register layouts and shared memory checked): both
    kernels lower to Mosaic. Mosaic's own compilers run on their hardware only."""
    from jax import export
    from lip_jax import lip_kernel

    monkeypatch.setattr(jax, "default_backend", lambda: platform)  # compiled, not interpreted

    def loss(x, l):
        return jnp.sum(lip_kernel.lip_pool_nhwc(x, l, ((3, 3), (2, 2), P1), kernel)
                       .astype(jnp.float32))

    args = (jax.ShapeDtypeStruct(shape, dtype),
            jax.ShapeDtypeStruct((*shape[:-1], logit_features), jnp.float32))
    target, custom_call = LOWERED[platform]
    module = export.export(jax.jit(jax.value_and_grad(loss, (0, 1))), platforms=[target])(
        *args).mlir_module()
    assert module.count(custom_call) == 2  # forward and backward


def test_unknown_implementation_is_refused_by_name():
    with pytest.raises(ValueError, match="implementation must be None or one of"):
        ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), (2, 2), implementation="triton")


def test_a_kernel_off_its_backend_and_not_on_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="pallas_tpu.* runs on TPU"):
        ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), (2, 2), implementation="pallas_tpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(ValueError, match="pallas_mosaic_gpu.* runs on GPU"):
        ops.lip_pool(jnp.ones((1, 4, 4, 1)), jnp.ones(1), (2, 2),
                     implementation="pallas_mosaic_gpu")


def _uses_kernel(**kwargs):
    x = jnp.ones((2, 6, 6, 3))
    window = kwargs.pop("window", (2, 2))
    jaxpr = jax.make_jaxpr(lambda x: ops.lip_pool(x, x, window, **kwargs))(
        x if len(window) == 2 else x[..., 0, :])
    return "pallas_call" in str(jaxpr)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the 8 CPU devices of conftest.py")
def test_default_picks_the_kernel_where_set_on_any_device_count(monkeypatch):
    assert jax.device_count() == 8  # tests/conftest.py
    assert _uses_kernel(implementation="pallas")
    assert _uses_kernel(implementation="pallas_tpu")
    assert not _uses_kernel(implementation="pallas", window=(2,))  # 1-D: the XLA graph
    assert not _uses_kernel()  # CPU default
    monkeypatch.setitem(ops.DEFAULT_IMPLEMENTATION, jax.default_backend(), "pallas")
    assert _uses_kernel()  # per shard of a sharded batch too (tests/test_sharding.py)
