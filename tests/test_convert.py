"""Conversion from the official PyTorch layout, and parity with PyTorch re-implementations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import convert
from lip_jax.models import create_model

torch = pytest.importorskip("torch")
import torch_models  # noqa: E402  (needs torch)

FULL = {"lip_resnet50": lambda: torch_models.ResNet((3, 4, 6, 3), lip=True),
        "lip_densenet121": lambda: torch_models.DenseNet((6, 12, 24, 16), lip=True)}
TINY_TORCH = {
    "lip_resnet50": lambda: torch_models.ResNet((1, 2, 1, 1), True, width=8, lip_width=8,
                                                num_classes=10),
    "resnet50": lambda: torch_models.ResNet((1, 2, 1, 1), False, width=8, num_classes=10),
    "lip_densenet121": lambda: torch_models.DenseNet((1, 2, 1), True, growth=4, init=8,
                                                     lip_width=8, num_classes=10),
    "densenet121": lambda: torch_models.DenseNet((1, 2, 1), False, growth=4, init=8,
                                                 num_classes=10),
}
TINY_KW = {
    "lip_resnet50": dict(stage_sizes=(1, 2, 1, 1), width=8, logit_width=8, num_classes=10),
    "resnet50": dict(stage_sizes=(1, 2, 1, 1), width=8, num_classes=10),
    "lip_densenet121": dict(block_sizes=(1, 2, 1), growth_rate=4, init_features=8,
                            logit_width=8, num_classes=10),
    "densenet121": dict(block_sizes=(1, 2, 1), growth_rate=4, init_features=8, num_classes=10),
}


def stage_names(name, model_kw):
    """Flax module names whose outputs are compared (stem pool and every stage end)."""
    if "resnet" in name:
        stages = model_kw.get("stage_sizes", (3, 4, 6, 3))
        return ["maxpool" if "lip" in name else None] + [
            f"layer{i}_{n - 1}" for i, n in enumerate(stages, start=1)]
    blocks = model_kw.get("block_sizes", (6, 12, 24, 16))
    return ["pool0" if "lip" in name else None] + [f"transition{i}"
                                                   for i in range(1, len(blocks))]


def torch_stage(torch_model, flax_name):
    if flax_name.startswith("layer"):
        layer, block = flax_name.split("_")
        return getattr(torch_model, layer)[int(block)]
    if flax_name == "maxpool":
        return torch_model.maxpool
    return getattr(torch_model.features, flax_name)


def run_torch(torch_model, images, names, train=False):
    """Logits and NHWC outputs of the named stages."""
    outputs = {}
    hooks = [torch_stage(torch_model, n).register_forward_hook(
        lambda mod, inp, out, n=n: outputs.__setitem__(n, out.detach().numpy().transpose(
            0, 2, 3, 1))) for n in names]
    torch_model.train(train)
    logits = torch_model(torch.tensor(images.transpose(0, 3, 1, 2)))
    for hook in hooks:
        hook.remove()
    return logits.detach().numpy(), outputs


def run_flax(name, variables, images, names, train=False, **model_kw):
    model = create_model(name, **model_kw)
    keep = lambda mdl, _: mdl.name in names and mdl.scope.path == (mdl.name,)
    logits, state = jax.jit(functools.partial(
        model.apply, train=train, capture_intermediates=keep,
        mutable=["intermediates", "batch_stats"]))(variables, images)
    inter = state["intermediates"]
    return logits, {n: inter[n]["__call__"][0] for n in names}, state.get("batch_stats")


def relative_error(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def state_dict(torch_model):
    return {k: v.numpy() for k, v in torch_model.state_dict().items()}


@pytest.mark.parametrize("name, full", [("lip_resnet50", True), ("lip_densenet121", True),
                                        ("resnet50", False), ("densenet121", False)])
def test_eval_parity_float32(name, full):
    torch_model = torch_models.randomise(FULL[name]() if full else TINY_TORCH[name]())
    model_kw = {} if full else TINY_KW[name]
    names = [n for n in stage_names(name, model_kw) if n]
    variables = convert.from_torch_state_dict(name, torch_model.state_dict(), **model_kw)
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected_logits, expected = run_torch(torch_model, images, names)
    logits, stages, _ = run_flax(name, variables, images, names, **model_kw)
    for n in names:
        assert relative_error(stages[n], expected[n]) < 1e-4, n
    assert relative_error(logits, expected_logits) < 1e-4


@pytest.mark.parametrize("name", ["lip_resnet50", "lip_densenet121"])
def test_train_mode_parity_float64_and_running_statistics(name):
    torch_model = torch_models.randomise(TINY_TORCH[name]()).double()
    model_kw = dict(TINY_KW[name], dtype=jnp.float64, param_dtype=jnp.float64)
    names = [n for n in stage_names(name, model_kw) if n]
    images = np.random.default_rng(1).standard_normal((2, 64, 64, 3))
    with jax.enable_x64(True):
        variables = convert.from_torch_state_dict(name, torch_model.state_dict(), **model_kw)
        expected_logits, expected = run_torch(torch_model, images, names, train=True)
        logits, stages, batch_stats = run_flax(name, variables, images, names, train=True,
                                               **model_kw)
        assert logits.dtype == jnp.float64
        for n in names:
            assert relative_error(stages[n], expected[n]) < 1e-8, n
        assert relative_error(logits, expected_logits) < 1e-8
        updated = convert.to_torch_state_dict(
            name, {"params": variables["params"], "batch_stats": batch_stats}, **model_kw)
    for key, value in state_dict(torch_model).items():
        if "running" in key:
            np.testing.assert_allclose(updated[key], value, rtol=1e-10, atol=1e-12,
                                       err_msg=key)


@pytest.mark.parametrize("name", list(TINY_TORCH))
def test_round_trip_is_exact(name):
    sd = state_dict(torch_models.randomise(TINY_TORCH[name]()))
    back = convert.to_torch_state_dict(
        name, convert.from_torch_state_dict(name, sd, **TINY_KW[name]), **TINY_KW[name])
    assert list(back) == list(sd)
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            assert back[key] == 0
        else:
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    loaded = TINY_TORCH[name]()
    loaded.load_state_dict({k: torch.tensor(v) for k, v in back.items()})  # strict


@pytest.fixture(scope="module")
def tiny_lip_resnet_sd():
    return state_dict(torch_models.randomise(TINY_TORCH["lip_resnet50"]()))


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("layer2.0.conv2.1.weight"), "missing key layer2.0.conv2.1.weight"),
    (lambda sd: sd.__setitem__("layer2.0.extra.weight", np.zeros(3)),
     "unexpected key layer2.0.extra.weight"),
    (lambda sd: sd.__setitem__("fc.weight", np.zeros((7, 256), np.float32)),
     r"key fc.weight has shape \[7, 256\], expected \[10, 256\]"),
    (lambda sd: sd.__setitem__("maxpool.logit.conv.weight", np.zeros((8, 8, 1, 3))),
     r"key maxpool.logit.conv.weight has shape \[8, 8, 1, 3\], expected \[8, 8, 3, 3\]"),
    (lambda sd: sd.__setitem__("layer2.0.conv1.weight", np.zeros((16, 32))),
     r"key layer2.0.conv1.weight has shape \[16, 32\], expected \[16, 32, 1, 1\]"),
])
def test_bad_checkpoints_name_the_key(tiny_lip_resnet_sd, edit, message):
    sd = dict(tiny_lip_resnet_sd)
    edit(sd)
    with pytest.raises(convert.CheckpointError, match=message):
        convert.from_torch_state_dict("lip_resnet50", sd, **TINY_KW["lip_resnet50"])


def test_wrong_model_name(tiny_lip_resnet_sd):
    with pytest.raises(ValueError, match="unknown model 'lip_resnet5'"):
        convert.from_torch_state_dict("lip_resnet5", tiny_lip_resnet_sd)
    with pytest.raises(convert.CheckpointError, match="missing key layer2.0.conv2.weight"):
        convert.from_torch_state_dict("resnet50", tiny_lip_resnet_sd, **TINY_KW["resnet50"])
    with pytest.raises(convert.CheckpointError, match="no official PyTorch release"):
        convert.from_torch_state_dict("lip_resnet18", tiny_lip_resnet_sd)
