"""Data parallelism on 8 CPU devices: pooling a batch-sharded input communicates nothing.

The compiled forward and backward (a `jax.vjp` with a batch-sharded cotangent, so that
no loss reduction adds its own all-reduce) hold no collective, on every implementation,
for meshes with explicit and automatic axes, the batch split over one axis or several,
and the results stay batch-sharded and equal the single-device ones. Explicit axes keep
the batch's own sharding; automatic ones carry no spec, and the batch is split over the
whole mesh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import lip_jax
from lip_jax import ops

P1 = ((1, 1), (1, 1))
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute",
               "reduce-scatter")
MESHES = {  # mesh shape, axis names, the batch's spec
    "one axis": ((8,), ("data",), P("data")),
    "batch on one of two axes": ((4, 2), ("batch", "model"), P("batch")),
    "batch on two axes": ((2, 4), ("replica", "data"), P(("replica", "data"))),
}


def _forward_and_backward(implementation):
    def run(x, logits, cot):
        y, vjp = jax.vjp(lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1,
                                                   implementation=implementation), x, logits)
        return (y, *vjp(cot))
    return jax.jit(run)


def _inputs(scale):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (8, 7, 9, 4))
    return x, scale * jax.random.normal(keys[1], x.shape), jax.random.normal(keys[2], (8, 4, 5, 4))


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_batch_sharded_pooling_has_no_collective(implementation, axis_type, mesh_name):
    shape, names, spec = MESHES[mesh_name]
    mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
    batch_axes = spec[0] if axis_type == AxisType.Explicit else names
    # Pallas' TPU interpreter runs callbacks, which need every mesh axis manual: an axis
    # the batch is not split on is then replicated and reduced over (on a TPU the kernel
    # is not interpreted and the axis stays automatic).
    expected = ({"all-reduce"} if implementation == "pallas_tpu"
                and set(np.atleast_1d(batch_axes)) != set(names) else set())
    run = _forward_and_backward(implementation)
    for scale in (1.0, 300.0):  # the image-wide form, and the per-window one
        args = _inputs(scale)
        sharded = [jax.device_put(a, NamedSharding(mesh, spec)) for a in args]
        hlo = run.lower(*sharded).compile().as_text()
        assert {c for c in COLLECTIVES if c in hlo} == expected, (implementation, scale)
        out = run(*sharded)
        for got, want in zip(out, run(*args)):
            assert set(np.atleast_1d(got.sharding.spec[0])) == set(np.atleast_1d(batch_axes))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu", "pallas_tpu"])
def test_vmap_over_a_sharded_batch_has_no_collective(implementation):
    """Per-example gradients (`vmap` of a one-image `value_and_grad`, as in DP-SGD) of a
    batch split over 8 devices, and per-example logits pooling a shared image: the
    kernels take the vmapped dim as their batch and run per shard."""
    mesh = jax.make_mesh((8,), ("data",))
    x, logits, _ = _inputs(1.0)
    image = x[:1]

    def per_example(x, l, image):
        def loss(x, l):
            return jnp.sum(ops.lip_pool(x[None], l[None], (3, 3), (2, 2), P1,
                                        implementation=implementation) ** 2)
        shared = jax.vmap(lambda l: ops.lip_pool(image, l[None], (3, 3), (2, 2), P1,
                                                 implementation=implementation))(l)
        return jax.vmap(jax.value_and_grad(loss, (0, 1)))(x, l), shared

    run = jax.jit(per_example)
    args = (*(jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, logits)),
            jax.device_put(image, NamedSharding(mesh, P())))
    assert not [c for c in COLLECTIVES if c in run.lower(*args).compile().as_text()]
    for got, want in zip(jax.tree.leaves(run(*args)), jax.tree.leaves(run(x, logits, image))):
        assert got.sharding.spec[0] == "data"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="compiled on a GPU, not interpreted")
def test_interpreted_mosaic_gpu_kernel_refuses_inputs_on_several_devices():
    """Mosaic GPU's interpreter (JAX 0.10) takes one device: run concurrently on the 8
    CPU devices it fails inside its callbacks, so a sharded batch gets a clear error (on a
    GPU the kernel is compiled and runs per shard as the others do)."""
    mesh = jax.make_mesh((8,), ("data",))
    x = jax.device_put(jnp.ones((8, 5, 5, 2)), NamedSharding(mesh, P("data")))
    with pytest.raises(ValueError, match="Mosaic GPU's interpreter, which takes one device"):
        ops.lip_pool(x, x, (3, 3), (2, 2), P1, implementation="pallas_mosaic_gpu")
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="these inputs span 8"):
        ops.lip_pool(jnp.ones((8, 5, 5, 2)), 0.0, (3, 3), (2, 2), P1,
                     implementation="pallas_mosaic_gpu")


def test_shared_logits_gradient_sums_over_the_batch():
    """Logits broadcast over the batch: their gradient is a sum over images, the one
    reduction (an all-reduce) that data parallelism then needs."""
    mesh = jax.make_mesh((8,), ("data",))
    x, _, cot = _inputs(1.0)
    logits = jax.random.normal(jax.random.key(5), (1, 7, 9, 4))
    run = _forward_and_backward("xla")
    args = (jax.device_put(x, NamedSharding(mesh, P("data"))),
            jax.device_put(logits, NamedSharding(mesh, P())),
            jax.device_put(cot, NamedSharding(mesh, P("data"))))
    assert "all-reduce" in run.lower(*args).compile().as_text()
    for got, want in zip(run(*args), run(x, logits, cot)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_mesh_in_context_splits_inputs_whose_type_has_none():
    """Under `jax.jit(..., in_shardings=...)` on uncommitted arrays the inputs' types carry
    no mesh; `jax.set_mesh` supplies it."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    run = jax.jit(_forward_and_backward("xla"), in_shardings=(sharding,) * 3)
    args = _inputs(1.0)
    with jax.set_mesh(mesh):
        hlo = run.lower(*args).compile().as_text()
    assert not [c for c in COLLECTIVES if c in hlo]


def test_a_lip_model_train_step_adds_no_all_gather():
    """The LIP layers of a small LIP CNN, batch-sharded: the step's only collectives are the
    gradient reductions its strided baseline has too."""
    from lip_jax.models import create_model

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    images = jax.device_put(jnp.ones((8, 28, 28, 1)), NamedSharding(mesh, P("data")))

    def counts(name):
        model = create_model(name, num_classes=10)
        variables = jax.device_put(model.init(jax.random.key(0), jnp.ones((1, 28, 28, 1))),
                                   NamedSharding(mesh, P()))
        step = jax.jit(jax.grad(lambda v, x: jnp.sum(model.apply(
            v, x, train=True, mutable=["batch_stats"])[0])))
        hlo = step.lower(variables, images).compile().as_text()
        return {c: hlo.count(c + "(") + hlo.count(c + "-start(") for c in COLLECTIVES}

    lip, baseline = counts("lip_cnn"), counts("cnn")
    assert lip["all-gather"] == baseline["all-gather"] == 0
    assert lip["collective-permute"] == lip["all-to-all"] == 0


OTHER_POOLINGS = {
    "average_pool": lambda x, l: lip_jax.average_pool(x, (3, 3), (2, 2), P1,
                                                      count_include_pad=True, ceil_mode=True),
    "lan_pool": lambda x, l: lip_jax.lan_pool(x, jnp.exp(l), (3, 3), (2, 2), P1),
    "blur_pool": lambda x, l: lip_jax.blur_pool(x, (3, 3), (2, 2), P1, padding_mode="reflect"),
    "dpp_pool": lambda x, l: lip_jax.dpp_pool(x, 1.0, 1.0, (3, 3), (2, 2), P1),
    "soft_pool": lambda x, l: lip_jax.soft_pool(x, (3, 3), (2, 2), P1),
    "window_share": lambda x, l: lip_jax.window_share(l, (3, 3), (2, 2), P1),
    "global_lip_pool": lip_jax.global_lip_pool,
    "adaptive_lip_pool": lambda x, l: lip_jax.adaptive_lip_pool(x, l, 3),
}


@pytest.mark.parametrize("name", list(OTHER_POOLINGS))
def test_every_other_pooling_of_a_sharded_batch_has_no_collective(name):
    mesh = jax.make_mesh((8,), ("data",))
    x, logits, _ = _inputs(1.0)
    args = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, logits)]

    def run(x, l):
        y, vjp = jax.vjp(OTHER_POOLINGS[name], x, l)
        return (y, *vjp(y))

    hlo = jax.jit(run).lower(*args).compile().as_text()
    assert not [c for c in COLLECTIVES if c in hlo]
