"""Every zoo model with every pooling: builds, trains a step (tiny widths), the aliases are
the same modules, feature maps for detection, the GlobalLIP head, the model table."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import convert
from lip_jax.models import POOL_CHOICES, create_model, list_models, model_spec

TINY = {"resnet18": dict(width=8, logit_width=8, stage_sizes=(1, 1, 1, 1)),
        "resnet50": dict(width=8, logit_width=8, stage_sizes=(1, 1, 1, 1)),
        "densenet121": dict(growth_rate=4, init_features=8, block_sizes=(1, 1, 1, 1),
                            logit_width=8),
        "cnn": dict(widths=(4, 8, 8), convs_per_stage=(1, 1, 1))}


def images(name, n=2):
    shape = model_spec(name).input_shape
    side = 32 if shape[0] > 32 else shape[0]
    return jax.random.normal(jax.random.key(1), (n, side, side, shape[2]))


@pytest.fixture(scope="module")
def quick_compile():
    """XLA:CPU compiles tiny models ~4x faster without its optimisation passes."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def init_and_grad(model, x):
    """`key -> (gradients of a train-mode loss, logits)` for a freshly initialised model."""
    def run(key):
        variables = model.init(key, x)

        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
            return jnp.mean(logits ** 2), logits

        return jax.grad(loss, has_aux=True)(variables["params"])
    return run


@pytest.mark.parametrize("pool", POOL_CHOICES)
@pytest.mark.parametrize("name", TINY)
def test_every_model_and_pool_builds_forward_and_backward(name, pool):
    """Traced (shapes, dtypes, variable trees) for all; run numerically below."""
    model = create_model(name, num_classes=3, pool=pool, **TINY[name])
    grads, logits = jax.eval_shape(init_and_grad(model, images(name)), jax.random.key(0))
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(grads)}
    assert any("log_alpha" in n for n in names) == pool.startswith("dpp")
    assert any("logit" in n for n in names) == (pool == "lip")


@pytest.mark.parametrize("name, pool", [*(("cnn", p) for p in POOL_CHOICES),
                                        ("resnet50", "dpp"), ("resnet18", "blur"),
                                        ("densenet121", "dpp_asym")])
def test_models_train_a_step_with_every_pool(quick_compile, name, pool):
    model = create_model(name, num_classes=3, pool=pool, **TINY[name])
    grads, logits = jax.jit(init_and_grad(model, images(name)))(jax.random.key(0))
    assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
    norms = {jax.tree_util.keystr(p): float(jnp.abs(g).sum())
             for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    assert all(np.isfinite(list(norms.values())))
    learned = [v for k, v in norms.items() if "log_alpha" in k or "logit" in k]
    assert (pool in ("lip", "dpp", "dpp_asym")) == any(v > 0 for v in learned)


@pytest.mark.parametrize("family, baseline, lip", [
    ("resnet50", "resnet50", "lip_resnet50"), ("resnet18", "resnet18", "lip_resnet18"),
    ("densenet121", "densenet121", "lip_densenet121"), ("cnn", "cnn", "lip_cnn")])
def test_aliases_are_the_family_with_pool_lip_or_strided(family, baseline, lip):
    assert create_model(family, pool="lip") == create_model(lip)
    assert create_model(family, pool="strided") == create_model(baseline)
    assert create_model(lip, pool="strided") == create_model(baseline)
    if family != "cnn":  # convert's layout switch
        assert create_model(lip).lip and not create_model(baseline).lip


def test_resnet50_with_pool_lip_has_the_official_parameter_count():
    count = lambda m: sum(x.size for x in jax.tree.leaves(convert.abstract_variables(m)[
        "params"]))
    assert count(create_model("resnet50", pool="lip")) == 23_864_232
    # LIP-ResNet-50's convolutions without the logit modules; DPP adds 2 per channel
    assert count(create_model("resnet50", pool="avg")) == 22_804_520
    assert count(create_model("resnet50", pool="dpp")) == 22_804_520 + 2 * (
        64 + 128 + 256 + 256 + 512 + 512 + 1024)


@pytest.mark.parametrize("name, pool", [("resnet50", "lip"), ("resnet18", "blur"),
                                        ("densenet121", "dpp"), ("densenet121", "strided")])
def test_features_only_gives_strides_4_to_32(name, pool):
    model = create_model(name, pool=pool, features_only=True, **TINY[name])
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    features = jax.eval_shape(model.apply, variables, x)
    assert list(features) == ["C2", "C3", "C4", "C5"]
    assert [f.shape[1:3] for f in features.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert not {"fc", "classifier"} & set(variables["params"])


class FPN(nn.Module):
    """The README's example: a feature pyramid on a LIP-ResNet's C2..C5."""

    backbone: nn.Module
    features: int = 256

    @nn.compact
    def __call__(self, images, train: bool = False):
        c = self.backbone(images, train=train)
        levels = ["C5", "C4", "C3", "C2"]
        p = nn.Conv(self.features, (1, 1), name="lateral_C5")(c["C5"])
        pyramid = {"P5": p}
        for level in levels[1:]:
            lateral = nn.Conv(self.features, (1, 1), name=f"lateral_{level}")(c[level])
            p = lateral + jax.image.resize(p, lateral.shape[:3] + p.shape[3:], "nearest")
            pyramid["P" + level[1]] = p
        return {k: nn.Conv(self.features, (3, 3), name=f"out_{k}")(v)
                for k, v in pyramid.items()}


def test_feature_pyramid_example():
    backbone = create_model("resnet50", pool="lip", features_only=True, **TINY["resnet50"])
    fpn = FPN(backbone, features=8)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(fpn.init, jax.random.key(0), x)
    out = jax.eval_shape(fpn.apply, variables, x)
    assert {k: v.shape for k, v in out.items()} == {
        "P5": (1, 2, 2, 8), "P4": (1, 4, 4, 8), "P3": (1, 8, 8, 8), "P2": (1, 16, 16, 8)}


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "cnn"])
def test_global_lip_head_starts_as_global_average_pooling(quick_compile, name):
    x = images(name)
    avg = create_model(name, num_classes=3, **TINY[name])
    lip = create_model(name, num_classes=3, global_pool="lip", **TINY[name])
    variables = jax.jit(lip.init)(jax.random.key(0), x)
    params = dict(variables["params"])
    head = params.pop("global_pool")
    assert set(head) == {"logit"}
    expected = avg.apply({**variables, "params": params}, x)
    np.testing.assert_allclose(jax.jit(lip.apply)(variables, x), expected, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("pool", POOL_CHOICES)
@pytest.mark.parametrize("name", TINY)
def test_empty_batch_gives_empty_logits(name, pool):
    model = create_model(name, num_classes=3, pool=pool, **TINY[name])
    x = images(name)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x[:0]).shape == (0, 3)


def test_bn_group_size_reaches_every_batch_norm():
    model = create_model("resnet50", num_classes=3, bn_group_size=2, **TINY["resnet50"])
    x = images("resnet50", n=4)
    variables = model.init(jax.random.key(0), x)
    grouped = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    whole = create_model("resnet50", num_classes=3, **TINY["resnet50"]).apply(
        variables, x, train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(grouped, whole)
    with pytest.raises(ValueError, match="group_size 3 must be >= 0 and divide the batch"):
        create_model("resnet50", num_classes=3, bn_group_size=3, **TINY["resnet50"]).apply(
            variables, x, train=True, mutable=["batch_stats"])


def test_model_table():
    assert model_spec("lip_cnn").input_shape == (28, 28, 1)
    assert model_spec("lip_resnet50")[1:] == ((224, 224, 3), 23.9, 5.33)
    assert model_spec("densenet121").paper_gmacs == 2.88
    assert model_spec("resnet18").paper_params_m is None
    assert set(list_models()) >= {"lip_resnet50", "resnet50", "lip_densenet121", "cnn"}


def test_unknown_names_are_named_with_suggestions():
    with pytest.raises(ValueError, match="unknown model 'lip_resnt50'; did you mean "
                                         "'lip_resnet50'"):
        create_model("lip_resnt50")
    with pytest.raises(ValueError, match="unknown pool 'mean'.*lip, avg"):
        create_model("resnet50", pool="mean")
    with pytest.raises(ValueError, match="global_pool"):
        jax.eval_shape(create_model("cnn", global_pool="max").init, jax.random.key(0),
                       jnp.zeros((1, 28, 28, 1)))
