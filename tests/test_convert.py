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
    (lambda sd: sd.pop("layer2.0.conv2.1.weight"), "1 missing key: layer2.0.conv2.1.weight"),
    (lambda sd: sd.__setitem__("layer2.0.extra.weight", np.zeros(3)),
     "1 unexpected key: layer2.0.extra.weight"),
    (lambda sd: sd.__setitem__("fc.weight", np.zeros((7, 256), np.float32)),
     r"1 mis-shaped key: fc.weight \[7, 256\] \(expected \[10, 256\]\)"),
    (lambda sd: sd.__setitem__("maxpool.logit.conv.weight", np.zeros((8, 8, 1, 3))),
     r"maxpool.logit.conv.weight \[8, 8, 1, 3\] \(expected \[8, 8, 3, 3\]\)"),
    (lambda sd: sd.__setitem__("layer2.0.conv1.weight", np.zeros((16, 32))),
     r"layer2.0.conv1.weight \[16, 32\] \(expected \[16, 32, 1, 1\]\)"),
    (lambda sd: sd.__setitem__("fc.bias", np.arange(10)), "key fc.bias has dtype int64"),
    (lambda sd: sd.__setitem__("fc.bias", np.ones(10, bool)), "key fc.bias has dtype bool"),
    (lambda sd: sd.__setitem__("fc.bias", np.array("ten")), "key fc.bias has dtype str"),
    (lambda sd: sd.__setitem__("fc.bias", np.array([0.0, "a"], object)),
     "key fc.bias has dtype object"),
    (lambda sd: sd.__setitem__("bn1.running_var", np.full(8, np.nan, np.float32)),
     "key bn1.running_var holds 8 NaN or infinite values"),
    (lambda sd: sd["fc.weight"].__setitem__((0, 0), np.inf),
     "key fc.weight holds 1 NaN or infinite values"),
    (lambda sd: sd["bn1.running_var"].__setitem__(0, -1.0),
     "key bn1.running_var holds 1 negative values; a variance is >= 0"),
    (lambda sd: sd.__setitem__("fc.bias", torch.empty(10, device="meta")),
     r"key fc.bias is a meta tensor \(a shape without values\)"),
    (lambda sd: sd.__setitem__("fc.bias", torch.zeros(10).to_sparse()),
     "key fc.bias is a torch.sparse_coo tensor, expected a dense"),
])
def test_bad_checkpoints_name_the_key(tiny_lip_resnet_sd, edit, message):
    sd = {k: v.copy() for k, v in tiny_lip_resnet_sd.items()}
    edit(sd)
    with pytest.raises(convert.CheckpointError, match=message):
        convert.from_torch_state_dict("lip_resnet50", sd, **TINY_KW["lip_resnet50"])


@pytest.mark.parametrize("override, gap", [
    (dict(global_pool="lip"), "3 variables without a key: params/global_pool/logit/conv/kernel"),
    (dict(features_only=True), "2 keys without a variable: fc.weight, fc.bias"),
])
def test_overrides_without_a_pytorch_layout_are_named(tiny_lip_resnet_sd, override, gap):
    """The table must map every variable of the model as built, and nothing else."""
    with pytest.raises(convert.CheckpointError, match=f"no PyTorch layout for lip_resnet50 "
                                                      f"with .*: {gap}"):
        convert.from_torch_state_dict("lip_resnet50", tiny_lip_resnet_sd, **override,
                                      **TINY_KW["lip_resnet50"])


@pytest.fixture(scope="module")
def tiny_lip_resnet_variables(tiny_lip_resnet_sd):
    return convert.from_torch_state_dict("lip_resnet50", tiny_lip_resnet_sd,
                                         **TINY_KW["lip_resnet50"])


def _with(variables, collection, path, value):
    """A copy of `variables` with `value` at `collection/path` (None: removed)."""
    copy = jax.tree.map(lambda x: x, variables)
    node = copy[collection]
    for name in path[:-1]:
        node = node.setdefault(name, {})
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda v: _with(v, "params", ("fc", "bias"), None), "1 missing key: params/fc/bias"),
    (lambda v: _with(v, "params", ("ghost", "kernel"), np.zeros(3, np.float32)),
     "1 unexpected key: params/ghost/kernel"),
    (lambda v: _with(v, "params", ("fc", "kernel"), v["params"]["fc"]["kernel"][..., None]),
     r"1 mis-shaped key: params/fc/kernel \[256, 10, 1\] \(expected \[256, 10\]\)"),
    (lambda v: _with(v, "batch_stats", ("bn1", "var"), -np.ones(8, np.float32)),
     "key batch_stats/bn1/var holds 8 negative values"),
    (lambda v: _with(v, "params", ("fc", "bias"), np.arange(10)),
     "key params/fc/bias has dtype int64"),
    (lambda v: jax.eval_shape(lambda: v),
     "key params/conv1/kernel is a jax.ShapeDtypeStruct"),
])
def test_to_torch_is_as_strict_as_from_torch(tiny_lip_resnet_variables, edit, message):
    with pytest.raises(convert.CheckpointError, match=message):
        convert.to_torch_state_dict("lip_resnet50", edit(tiny_lip_resnet_variables),
                                    **TINY_KW["lip_resnet50"])


def test_to_torch_checks_shapes_against_the_model_kwargs(tiny_lip_resnet_variables):
    with pytest.raises(convert.CheckpointError, match=r"2 mis-shaped keys: params/fc/kernel "
                                                      r"\[256, 10\] \(expected \[256, 7\]\)"):
        convert.to_torch_state_dict("lip_resnet50", tiny_lip_resnet_variables,
                                    **dict(TINY_KW["lip_resnet50"], num_classes=7))
    with pytest.raises(TypeError, match="variables must be a mapping .* got a list"):
        convert.to_torch_state_dict("lip_resnet50", [1], **TINY_KW["lip_resnet50"])


def test_bfloat16_variables_give_float32_torch_loads(tiny_lip_resnet_variables):
    bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tiny_lip_resnet_variables)
    back = convert.to_torch_state_dict("lip_resnet50", bf16, **TINY_KW["lip_resnet50"])
    assert back["conv1.weight"].dtype == np.float32
    np.testing.assert_array_equal(back["fc.bias"], np.asarray(bf16["params"]["fc"]["bias"],
                                                              np.float32))
    TINY_TORCH["lip_resnet50"]().load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.items()})


def test_mismatch_report_is_capped_and_names_a_common_prefix(tiny_lip_resnet_sd):
    prefixed = {f"backbone.{k}": v for k, v in tiny_lip_resnet_sd.items()}
    with pytest.raises(convert.CheckpointError) as error:
        convert.from_torch_state_dict("lip_resnet50", prefixed, **TINY_KW["lip_resnet50"])
    lines = str(error.value).splitlines()
    count = sum(not k.endswith("num_batches_tracked") for k in tiny_lip_resnet_sd)
    assert len(lines) == 4, lines
    assert lines[1] == (f"  {count} missing keys: conv1.weight, bn1.weight, bn1.bias, "
                        f"bn1.running_mean, bn1.running_var (and {count - 5} more)")
    assert lines[2].startswith(f"  {count} unexpected keys: backbone.conv1.weight, ")
    assert lines[3] == "  every unexpected key starts with 'backbone.'; the model's keys do not"


@pytest.mark.parametrize("checkpoint, message", [
    ([1, 2], "a checkpoint holding a list, not a state_dict"),
    ({0: np.zeros(3), "fc.bias": np.zeros(3)},
     r"keys must be strings; got 1 others, e.g. 0 \(int\)"),
])
def test_what_is_not_a_state_dict_gets_one_line(checkpoint, message):
    with pytest.raises(convert.CheckpointError, match=message) as error:
        convert.from_torch_state_dict("lip_resnet50", checkpoint)
    assert "\n" not in str(error.value)


def test_official_training_checkpoint_converts(tiny_lip_resnet_sd, tmp_path, caplog):
    """main.py of the official release saves {epoch, arch, state_dict, best_acc1, optimizer}
    from a DistributedDataParallel model (keys start with `module.`) as checkpoint.pth.tar."""
    state = {f"module.{k}": torch.tensor(v) for k, v in tiny_lip_resnet_sd.items()}
    # The layout of torch.optim.SGD(...).state_dict(), written out: building a torch
    # optimizer imports torch._dynamo (and triton where it is installed) for nothing.
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(2)}},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "lip_resnet50", "state_dict": state,
                "best_acc1": torch.tensor(79.3), "optimizer": optimizer}, path)
    with caplog.at_level("INFO", logger="lip_jax"):
        variables = convert.from_torch_state_dict("lip_resnet50", convert.read_checkpoint(path),
                                                  **TINY_KW["lip_resnet50"])
    assert "stripped the 'module.' prefix" in caplog.text
    assert "ignoring arch, best_acc1, epoch, optimizer" in caplog.text
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                  tiny_lip_resnet_sd["fc.weight"].T)


def test_bfloat16_pth_converts_exactly(tiny_lip_resnet_sd, tmp_path):
    path = tmp_path / "lip_resnet-50.pth"
    torch.save({k: torch.tensor(v).to(torch.bfloat16) if v.dtype == np.float32
                else torch.tensor(v) for k, v in tiny_lip_resnet_sd.items()}, path)
    variables = convert.from_torch_state_dict("lip_resnet50", convert.read_checkpoint(path),
                                              **TINY_KW["lip_resnet50"])
    kernel = variables["params"]["conv1"]["kernel"]
    assert kernel.dtype == np.float32
    expected = torch.tensor(tiny_lip_resnet_sd["conv1.weight"]).to(torch.bfloat16).float()
    np.testing.assert_array_equal(kernel, expected.numpy().transpose(2, 3, 1, 0))


def test_unreadable_files_are_named(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(convert.CheckpointError, match="weights.pth is not a .pth checkpoint"):
        convert.read_checkpoint(garbage)
    with pytest.raises(convert.CheckpointError, match=r"expected a .pth, .pt, .pth.tar"):
        convert.read_checkpoint(tmp_path / "weights.bin")


def test_what_is_not_a_checkpoint_of_its_kind_is_said_in_words(tiny_lip_resnet_sd, tmp_path):
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(convert.CheckpointError, match="text.pth is not a .pth checkpoint .*: "
                                                      "neither a zip archive nor a pickle"):
        convert.read_checkpoint(tmp_path / "text.pth")
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(convert.CheckpointError, match="folder.pth is a directory, expected a "
                                                      "checkpoint file"):
        convert.read_checkpoint(tmp_path / "folder.pth")
    torch.save({"fc.bias": torch.zeros(3)}, tmp_path / "torch.npz")
    with pytest.raises(convert.CheckpointError, match=r"torch.npz is not a .npz checkpoint .*"
                                                      r"members are not .npy arrays, e.g. "):
        convert.read_checkpoint(tmp_path / "torch.npz")


def test_wrong_model_name(tiny_lip_resnet_sd):
    with pytest.raises(ValueError, match="unknown model 'lip_resnet5'"):
        convert.from_torch_state_dict("lip_resnet5", tiny_lip_resnet_sd)
    with pytest.raises(convert.CheckpointError,
                       match="missing keys: layer1.0.downsample.0.weight"):
        convert.from_torch_state_dict("resnet50", tiny_lip_resnet_sd, **TINY_KW["resnet50"])
    with pytest.raises(convert.CheckpointError, match="no official PyTorch release"):
        convert.from_torch_state_dict("lip_resnet18", tiny_lip_resnet_sd)


@pytest.mark.parametrize("name", ["densenet121", "resnet50"])
def test_pools_without_an_official_layout_are_refused_by_name(name):
    """DenseNet with pool="avg" has the baseline's variables: it must not take them."""
    with pytest.raises(convert.CheckpointError, match="no PyTorch layout for pool='avg'"):
        convert.key_table(create_model(name, pool="avg"))
