"""Model zoo: sizes, forward passes in f32 and bf16, train mode, key layouts, NNX use."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lip_jax import convert
from lip_jax.models import create_model, list_models

DATA = Path(__file__).parent / "data"
TINY = {"resnet": dict(width=8, logit_width=8, stage_sizes=(1, 1, 1, 1)),
        "densenet": dict(growth_rate=4, init_features=8, block_sizes=(1, 2, 1), logit_width=8)}


def tiny(name, **kw):
    return create_model(name, num_classes=10, **TINY["densenet" if "dense" in name else "resnet"],
                        **kw)


def random_variables(model, seed=0):
    """Random variables of the model's shapes without compiling its init (slow on CPU)."""
    rng = np.random.default_rng(seed)
    abstract = convert.abstract_variables(model)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                          abstract["params"])
    stats = jax.tree.map(lambda s: (0.5 + rng.random(s.shape)).astype(s.dtype),
                         abstract["batch_stats"])
    return {"params": params, "batch_stats": stats}


def n_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, count", [
    ("lip_resnet50", 23_864_232), ("lip_resnet101", 42_856_360),
    ("lip_densenet121", 8_690_920), ("resnet50", 25_557_032), ("densenet121", 7_978_856),
    ("resnet18", 11_689_512), ("resnet101", 44_549_160)])
def test_parameter_counts_are_exact(name, count):
    assert n_params(convert.abstract_variables(create_model(name))) == count


@pytest.mark.parametrize("name", list_models())
def test_every_model_traces_at_224_in_f32_and_bf16(name):
    for dtype in (jnp.float32, jnp.bfloat16):
        model = create_model(name, dtype=dtype)
        images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
        variables = convert.abstract_variables(model)
        out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
        assert out.shape == (2, 1000) and out.dtype == dtype
        assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["resnet18", "lip_resnet18", "resnet50", "lip_resnet50",
                                  "densenet121", "lip_densenet121"])
def test_tiny_variants_run_and_train_mode_updates_batch_stats(name):
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    model = tiny(name)
    variables = random_variables(model)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train(variables, images)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                           updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
    bf16 = jax.jit(tiny(name, dtype=jnp.bfloat16).apply)(variables, images)
    assert bf16.dtype == jnp.bfloat16
    eval_logits = jax.jit(model.apply)(variables, images)
    np.testing.assert_allclose(bf16.astype(jnp.float32), eval_logits,
                               atol=0.05 * float(jnp.abs(eval_logits).max()) + 1e-3)


def test_remat_logits_changes_memory_not_results():
    """In float64: in float32, train-mode BatchNorm at batch 2 amplifies the rounding of
    a different op order to ~3e-4."""
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float64)
        variables = random_variables(tiny("lip_resnet50", **f64))

        def loss_and_grads(remat):
            model = tiny("lip_resnet50", remat_logits=remat, **f64)
            loss = lambda p: jnp.sum(model.apply({"params": p, "batch_stats":
                                                  variables["batch_stats"]}, images,
                                                 train=True, mutable=["batch_stats"])[0] ** 2)
            return jax.jit(jax.value_and_grad(loss))(variables["params"])

        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10),
                     loss_and_grads(False), loss_and_grads(True))


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'lip_resnet51'.*lip_resnet50"):
        create_model("lip_resnet51")
    with pytest.raises(ValueError, match="unknown model None; known models: cnn, "):
        create_model(None)
    for dtype in ("float33", jnp.int32):
        with pytest.raises(TypeError, match="dtype must be a floating dtype"):
            create_model("cnn", dtype=dtype)


@pytest.mark.parametrize("name", ["lip_resnet50", "lip_resnet101", "lip_densenet121"])
def test_key_table_is_the_official_layout(name):
    """Every key and shape of the released checkpoints, in their order."""
    expected = [line.split() for line in (DATA / f"{name}_keys.txt").read_text().splitlines()]
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             convert.abstract_variables(create_model(name)))
    got = convert.to_torch_state_dict(name, variables)
    assert [[k, str(list(v.shape)).replace(" ", "")] for k, v in got.items()] == expected


def test_official_initialisation():
    images = jnp.ones((1, 64, 64, 3))
    init = lambda name: jax.jit(tiny(name).init)(jax.random.key(0), images)["params"]
    resnet = init("lip_resnet50")
    assert not np.any(resnet["layer2_0"]["bn3"]["scale"])
    assert not np.any(resnet["layer2_0"]["lip"]["logit"]["conv"]["kernel"])
    assert not np.any(resnet["maxpool"]["logit"]["conv"]["kernel"])
    densenet = init("lip_densenet121")
    assert np.all(densenet["transition1"]["pool"]["logit"]["head"]["conv"]["kernel"] != 0)
    assert np.all(init("resnet50")["layer1_0"]["bn3"]["scale"] == 1)


def test_usable_from_nnx_through_the_bridge():
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    linen_model = tiny("lip_resnet18")
    model = nnx.bridge.ToNNX(linen_model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, images)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    expected = linen_model.apply({"params": params, "batch_stats": stats}, images)
    np.testing.assert_allclose(model(images), expected, rtol=1e-5, atol=1e-6)
    # train mode through NNX updates the batch statistics in place
    model(images, train=True, mutable=["batch_stats"])
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, after)))


def test_num_classes_may_be_given_positionally_as_in_the_readme():
    x = jnp.zeros((1, 28, 28, 1))
    positional = jax.eval_shape(create_model("lip_cnn", 10).init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, positional) == jax.tree.map(
        jnp.shape, jax.eval_shape(create_model("lip_cnn", num_classes=10).init,
                                  jax.random.key(0), x))
    assert positional["params"]["fc"]["kernel"].shape[-1] == 10
