"""NNX zoo: every model and override builds the Linen variable tree from NNX modules;
Linen-layout variables (random, through the converter, through `lip_jax.pretrained`) give
the Linen model's logits, batch statistics and gradients; exact round trip; bad input
named."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lip_jax import convert, models, nnx as N
from lip_jax.blocks import layers as D
from lip_jax.linen.downsample import POOL_CHOICES, Pooling
from lip_jax.nnx.build import Kit
from lip_jax.ops import average_pool

TINY = {"resnet": dict(width=8, logit_width=8, stage_sizes=(1, 1, 1, 1)),
        "densenet": dict(growth_rate=4, init_features=8, block_sizes=(1, 2, 1), logit_width=8),
        "cnn": dict(widths=(4, 8, 8), convs_per_stage=(1, 2, 1))}


def tiny(name):
    return TINY["cnn" if "cnn" in name else "densenet" if "dense" in name else "resnet"]


def images(name, n=2):
    shape = (n, 28, 28, 1) if "cnn" in name else (n, 32, 32, 3)
    return jax.random.normal(jax.random.key(1), shape)


def linen_and_nnx(name, **kw):
    """The tiny Linen model and its NNX twin (train mode) built from the same arguments,
    the latter abstract (`nnx.eval_shape`: nothing initialised) until variables load."""
    kw = {**tiny(name), **kw}
    return (models.create_model(name, 5, **kw),
            nnx.eval_shape(lambda: N.create_model(name, 5, rngs=nnx.Rngs(0), **kw)))


def random_variables(linen, x, seed=0):
    """Non-trivial Linen variables (zeros and ones would hide mix-ups)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(linen.init, jax.random.key(0), x)
    return {"params": jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(
                s.dtype), shapes["params"]),
            "batch_stats": jax.tree.map(lambda s: (0.5 + rng.random(s.shape)).astype(
                s.dtype), shapes["batch_stats"])}


def shapes(tree):
    return jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), tree)


CASES = [
    *((name, {}) for name in models.list_models()),
    *((name, {"pool": pool}) for name in ("resnet18", "resnet50", "densenet121", "cnn")
      for pool in POOL_CHOICES),
    ("lip_resnet50", {"global_pool": "lip", "dtype": jnp.bfloat16}),
    ("lip_resnet18", {"features_only": True}),
    ("densenet121", {"features_only": True, "pool": "dpp", "global_pool": "lip"}),
    ("resnet50", {"pool": "lip", "remat_logits": True, "zero_init_residual": False,
                  "bn_group_size": 2}),
    ("lip_cnn", {"global_pool": "lip", "param_dtype": jnp.bfloat16}),
]


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_every_model_and_override_has_the_linen_variables_and_outputs(name, kw):
    """Shapes and dtypes only: traced, not compiled."""
    x = images(name)
    linen, model = linen_and_nnx(name, **kw)
    variables = jax.eval_shape(linen.init, jax.random.key(0), x)
    expected = jax.eval_shape(functools.partial(linen.apply, train=True,
                                                mutable=["batch_stats"]), variables, x)
    assert shapes(N.linen_variables(model)) == shapes(variables)
    graph, state = nnx.split(model)
    out = jax.eval_shape(lambda s: nnx.merge(graph, s)(x), state)
    assert shapes(out) == shapes(expected[0])


@pytest.mark.parametrize("name, count", [
    ("lip_resnet50", 23_864_232), ("resnet50", 25_557_032), ("lip_densenet121", 8_690_920),
    ("densenet121", 7_978_856)])
def test_full_size_parameter_counts_equal_linen(name, count):
    model = nnx.eval_shape(lambda: N.create_model(name, rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == count


@pytest.fixture(scope="module")
def quick_compile():
    """XLA:CPU compiles tiny models ~4x faster without its optimisation passes."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


VARIANTS = {  # every family: bottleneck and basic ResNets, DenseNet, the small CNN
    "lip_resnet50 through the converter": ("lip_resnet50", {}),
    "lip_resnet18 with a GlobalLIP head": ("lip_resnet18", {"global_pool": "lip"}),
    "lip_densenet121": ("lip_densenet121", {}),
    "densenet121 with dpp_asym": ("densenet121", {"pool": "dpp_asym"}),
    "cnn with BatchNorm groups of 1": ("cnn", {"bn_group_size": 1}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def outputs(request, quick_compile):
    """Linen and NNX eval logits, train logits and updated batch statistics, from the same
    Linen-layout variables; one compilation per variant."""
    name, kw = VARIANTS[request.param]
    linen, model = linen_and_nnx(name, **kw)
    x = images(name)
    variables = random_variables(linen, x)
    if "converter" in request.param:  # the layout `lip-jax convert` writes
        variables = convert.from_torch_state_dict(name, convert.to_torch_state_dict(
            name, variables, num_classes=5, **tiny(name)), num_classes=5, **tiny(name))
    N.load_variables(model, variables)
    graph, state = nnx.split(model)

    @jax.jit
    def run(variables, state):
        train, updates = linen.apply(variables, x, train=True, mutable=["batch_stats"])
        model = nnx.merge(graph, state)
        model.eval()
        nnx_eval = model(x)
        model.train()
        nnx_train = model(x)
        return ((linen.apply(variables, x), train, updates["batch_stats"]),
                (nnx_eval, nnx_train, N.linen_variables(model)["batch_stats"]))

    return run(variables, state)


def test_nnx_outputs_and_batch_statistics_equal_linen(outputs):
    (linen_eval, linen_train, linen_stats), (nnx_eval, nnx_train, nnx_stats) = outputs
    np.testing.assert_allclose(nnx_eval, linen_eval, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nnx_train, linen_train, rtol=1e-6, atol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
                 nnx_stats, linen_stats)
    assert not np.allclose(linen_eval, linen_train, atol=1e-3)  # the modes differ


def test_gradients_and_batch_statistics_of_a_train_step_equal_linen(quick_compile):
    linen, model = linen_and_nnx("lip_cnn")
    x = images("lip_cnn")
    variables = random_variables(linen, x)

    def loss(params):
        logits, updates = linen.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
        return jnp.sum(logits ** 2), updates["batch_stats"]

    expected, stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    N.load_variables(model, variables)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(model)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, nnx.to_pure_dict(grads), expected)
    jax.tree.map(close, N.linen_variables(model)["batch_stats"], stats)
    assert float(jnp.abs(expected["pool1"]["logit"]["conv"]["kernel"]).max()) > 0


def test_remat_logits_recompute_without_changing_values_or_gradients():
    """`remat_logits=True` builds the logit modules under `nnx.remat`."""
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 4))
    declared = D.logit("BottleneckLogit", 4, width=8, zero_init=False)
    remat_name = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name

    def value_and_grads(remat):
        module = Kit(nnx.Rngs(0)).build(dataclasses.replace(declared, remat=remat))
        graph, state = nnx.split(module)
        jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graph, s)(x))(state)
        assert (remat_name in {e.primitive.name for e in jaxpr.eqns}) == remat
        return nnx.value_and_grad(lambda m: jnp.sum(jnp.sin(m(x))))(module)

    (value, grads), (remat_value, remat_grads) = value_and_grads(False), value_and_grads(True)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                 nnx.to_pure_dict(remat_grads), nnx.to_pure_dict(grads))


def test_round_trip_is_exact_and_keeps_the_models_dtypes():
    linen, model = linen_and_nnx("lip_resnet50", param_dtype=jnp.bfloat16)
    variables = random_variables(linen, images("lip_resnet50"))
    back = N.linen_variables(N.load_variables(model, variables))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 back, variables)
    assert shapes(back) == shapes(variables)
    f32 = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)
    cast = N.linen_variables(N.load_variables(model, f32))  # cast to the model's dtypes
    assert shapes(cast) == shapes(variables)


def test_weights_saved_by_lip_jax_pretrained_load(tmp_path):
    pretrained = pytest.importorskip("lip_jax.pretrained")
    linen, model = linen_and_nnx("lip_cnn")
    variables = random_variables(linen, images("lip_cnn"))
    pretrained.save_variables(tmp_path, "lip_cnn", variables)
    N.load_variables(model, pretrained.load_variables(tmp_path, "lip_cnn"))
    jax.tree.map(np.testing.assert_array_equal, N.linen_variables(model), variables)


@pytest.mark.parametrize("edit, message", [
    (lambda v: v["params"].pop("fc"), "2 missing: params/fc/bias, params/fc/kernel"),
    (lambda v: v["batch_stats"]["bn0_0"].update(extra=np.zeros(3)),
     "1 unexpected: batch_stats/bn0_0/extra"),
    (lambda v: v["params"]["fc"].update(bias=np.zeros(7)),
     r"1 mis-shaped: params/fc/bias \(7,\) vs the model's \(5,\)"),
    (lambda v: v.update(opt_state={"mu": np.zeros(3)}), "1 unexpected: opt_state/mu"),
    (lambda v: v.pop("batch_stats"), r"\d+ missing: batch_stats/bn0_0/mean, .*, \.\.\."),
])
def test_mismatched_variables_are_named_and_nothing_is_loaded(edit, message):
    linen = models.create_model("cnn", 5, **TINY["cnn"])
    model = N.create_model("cnn", 5, rngs=nnx.Rngs(0), **TINY["cnn"])  # initialised
    variables = random_variables(linen, images("cnn"))
    before = N.linen_variables(model)
    edit(variables)
    with pytest.raises(ValueError, match="variables do not fit the SmallCNN: " + message):
        N.load_variables(model, variables)
    jax.tree.map(np.testing.assert_array_equal, N.linen_variables(model), before)


@pytest.mark.parametrize("edit, message", [
    (lambda v: v.update(batch_stats=jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), v["batch_stats"])),
     "key batch_stats/bn0_0/mean is a jax.ShapeDtypeStruct (a shape without values)"),
    (lambda v: v["params"]["fc"].update(bias=np.full(5, np.nan)),
     "key params/fc/bias holds 5 NaN or infinite values"),
    (lambda v: v["params"]["fc"].update(bias=np.ones(5, np.complex64)),
     "key params/fc/bias has dtype complex64, expected a floating-point tensor"),
    (lambda v: v["params"]["fc"].update(bias=np.ones(5, bool)),
     "key params/fc/bias has dtype bool, expected a floating-point tensor"),
])
def test_values_that_are_not_finite_floats_are_named_and_nothing_is_loaded(edit, message):
    """Abstract values failed after every param was already set; NaN, complex (its
    imaginary part dropped) and bool values loaded silently."""
    linen = models.create_model("cnn", 5, **TINY["cnn"])
    model = N.create_model("cnn", 5, rngs=nnx.Rngs(0), **TINY["cnn"])
    variables = random_variables(linen, images("cnn"))
    before = N.linen_variables(model)
    edit(variables)
    with pytest.raises(convert.CheckpointError, match=re.escape(message)):
        N.load_variables(model, variables)
    jax.tree.map(np.testing.assert_array_equal, N.linen_variables(model), before)


@pytest.mark.parametrize("kw, error, message", [
    (dict(rngs=jax.random.key(0)), TypeError, "rngs must be an nnx.Rngs, e.g. nnx.Rngs(0)"),
    (dict(rngs=nnx.Rngs(0), param_dtype=jnp.int32), TypeError,
     "param_dtype must be a floating dtype"),
])
def test_bad_rngs_and_param_dtype_are_named(kw, error, message):
    """A key for rngs failed in a flax initialiser ('no attribute params'), an integer
    param_dtype in jax.random."""
    with pytest.raises(error, match=re.escape(message)):
        N.create_model("cnn", 5, **TINY["cnn"], **kw)


def test_variables_that_are_not_a_mapping_are_refused():
    _, model = linen_and_nnx("cnn")
    with pytest.raises(TypeError, match="variables must be a mapping.*got a list"):
        N.load_variables(model, [])


@pytest.mark.parametrize("bad", [0, -3, 10.0, "10", True, None])
def test_num_classes_must_be_a_positive_int_in_both_front_ends(bad):
    message = f"num_classes must be a positive int, got {re.escape(repr(bad))}"
    with pytest.raises(ValueError, match=message):
        models.create_model("lip_cnn", bad)
    with pytest.raises(ValueError, match=message):
        N.create_model("lip_cnn", bad, rngs=nnx.Rngs(0))
    if bad is not None:  # in_features=None: the model's own
        with pytest.raises(ValueError, match=f"in_features must be a positive int, got "
                                             f"{re.escape(repr(bad))}"):
            N.create_model("lip_cnn", 10, rngs=nnx.Rngs(0), in_features=bad)


def test_images_of_other_channel_counts_and_errors_of_the_linen_factory():
    model = nnx.eval_shape(lambda: N.create_model("lip_resnet18", 5, rngs=nnx.Rngs(0),
                                                  in_features=1, **TINY["resnet"]))
    assert model.conv1.kernel.shape == (7, 7, 1, 8)
    with pytest.raises(ValueError, match="unknown pool 'mean'"):
        N.create_model("resnet50", pool="mean", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='global_pool must be "avg" or "lip", got \'max\''):
        N.create_model("cnn", global_pool="max", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name, fields, error, match", [
    ("cnn", dict(widths=(8, 8, 8, 8)), ValueError, r"widths \(8, 8, 8, 8\) has more stages "
                                                   r"than convs_per_stage \(1, 2, 2\)"),
    ("cnn", dict(widths=(8, 0)), ValueError, r"widths must be one or more positive ints"),
    ("cnn", dict(widths=8), TypeError, "widths must be a sequence of ints, got 8"),
    ("cnn", dict(convs_per_stage=(1, 0, 1)), ValueError, "convs_per_stage must be one or more"),
    ("resnet18", dict(stage_sizes=(2, 0, 2, 2)), ValueError, "stage_sizes must be one or more"),
    ("resnet18", dict(width=0), ValueError, "width must be a positive int, got 0"),
    ("lip_resnet50", dict(logit_width=8.5), ValueError, "logit_width must be a positive int"),
    ("densenet121", dict(block_sizes=()), ValueError, r"block_sizes must be one or more .* \(\)"),
    ("densenet121", dict(growth_rate=0), ValueError, "growth_rate must be a positive int"),
])
def test_bad_architecture_fields_are_named_in_both_front_ends(name, fields, error, match):
    """They used to build a different network (zip truncated widths) or die in an
    initialiser (ZeroDivisionError)."""
    with pytest.raises(error, match=match):
        N.create_model(name, 5, rngs=nnx.Rngs(0), **fields)
    with pytest.raises(error, match=match):
        jax.eval_shape(models.create_model(name, 5, **fields).init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 1 if name == "cnn" else 3)))


@pytest.mark.parametrize("family", ["cnn", "resnet", "densenet"])
def test_images_that_are_not_a_channels_last_batch_are_named(family):
    """A single image or channels-first images ran, misread (a (7, 10) "batch" of
    logits); now both front ends name the shape."""
    name = {"cnn": "cnn", "resnet": "resnet18", "densenet": "densenet121"}[family]
    nnx_model = N.create_model(name, 5, rngs=nnx.Rngs(0), in_features=3, **TINY[family])
    linen_model = models.create_model(name, 5, **TINY[family])
    for shape in [(16, 16, 3), (2, 3, 16, 16), (2, 16, 16, 4)]:
        match = re.escape(f"images of shape {shape}: expected (N, H, W, 3)")
        with pytest.raises(ValueError, match=match):
            nnx_model(jnp.zeros(shape))
        if shape[-1] == 3:  # Linen's channels are the images' own
            with pytest.raises(ValueError, match=match):
                jax.eval_shape(linen_model.init, jax.random.key(0), jnp.zeros(shape))


def test_a_pooling_without_an_nnx_layer_is_named():
    mine = Pooling("mine", lambda w, s, p, logit, name: functools.partial(
        average_pool, window_shape=w, strides=s, padding=p))
    jax.eval_shape(models.create_model("cnn", pool=mine).init, jax.random.key(0),
                   images("cnn"))  # Linen takes it
    with pytest.raises(ValueError, match="pool 'mine' has no NNX layer"):
        N.create_model("cnn", pool=mine, rngs=nnx.Rngs(0))


def test_batch_norm_mode_follows_eval_train_and_view():
    bn = N.BatchNorm(3, group_size=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3)) + 1.0
    bn(x)
    moved = N.linen_variables(bn)["batch_stats"]
    assert not np.allclose(moved["mean"], 0.0)
    frozen = nnx.view(bn, use_running_average=True)
    np.testing.assert_allclose(frozen(x), (x - moved["mean"]) / np.sqrt(moved["var"] + 1e-5),
                               rtol=1e-5, atol=1e-6)
    bn.eval()
    bn(x)
    jax.tree.map(np.testing.assert_array_equal, N.linen_variables(bn)["batch_stats"], moved)
    with pytest.raises(ValueError, match="group_size 2 must be >= 0 and divide the batch "
                                         "of 3 examples"):
        bn(x[:3], use_running_average=False)
