"""Official PyTorch state_dicts <-> Flax variables, through an explicit key table.

Layouts: LIP models use the official LIP release's keys (`lip_resnet-50.pth`, ...),
baselines torchvision's. Transforms: conv OIHW <-> HWIO, linear [out, in] <-> [in, out],
BatchNorm weight/bias/running_mean/running_var <-> scale/bias (params) and mean/var
(batch_stats), InstanceNorm weight/bias <-> scale/bias. `num_batches_tracked` is skipped
on the way in and written as 0 on the way out (PyTorch's strict loading expects it).
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.linen.densenet import DenseNet
from lip_jax.linen.resnet import ResNet
from lip_jax.models import create_model

Path = tuple[str, ...]


class Entry(NamedTuple):
    torch_key: str
    collection: str  # "params" or "batch_stats"
    path: Path
    kind: str  # "conv", "linear" or "vector"


class CheckpointError(ValueError):
    """A state_dict that does not fit the model; the message names every bad key."""


def _to_flax(kind, value):
    return {"conv": lambda v: v.transpose(2, 3, 1, 0), "linear": lambda v: v.T,
            "vector": lambda v: v}[kind](value)


def _to_torch(kind, value):
    return {"conv": lambda v: v.transpose(3, 2, 0, 1), "linear": lambda v: v.T,
            "vector": lambda v: v}[kind](value)


def _torch_shape(kind, flax_shape) -> list[int]:
    order = {"conv": (3, 2, 0, 1), "linear": (1, 0), "vector": (0,)}[kind]
    return [flax_shape[i] for i in order]


def conv(t: str, f: Path) -> list[Entry]:
    return [Entry(f"{t}.weight", "params", f + ("kernel",), "conv")]


def linear(t: str, f: Path) -> list[Entry]:
    return [Entry(f"{t}.weight", "params", f + ("kernel",), "linear"),
            Entry(f"{t}.bias", "params", f + ("bias",), "vector")]


def instance_norm(t: str, f: Path) -> list[Entry]:
    return [Entry(f"{t}.weight", "params", f + ("scale",), "vector"),
            Entry(f"{t}.bias", "params", f + ("bias",), "vector")]


def batch_norm(t: str, f: Path) -> list[Entry]:
    return instance_norm(t, f) + [
        Entry(f"{t}.running_mean", "batch_stats", f + ("mean",), "vector"),
        Entry(f"{t}.running_var", "batch_stats", f + ("var",), "vector")]


def _trunk(t: str, f: Path, numbered=("conv1", "bn1", "conv2", "bn2")) -> list[Entry]:
    c1, n1, c2, n2 = numbered
    return (conv(f"{t}.{c1}", f + ("conv1",)) + instance_norm(f"{t}.{n1}", f + ("norm1",))
            + conv(f"{t}.{c2}", f + ("conv2",)) + instance_norm(f"{t}.{n2}", f + ("norm2",)))


def _head(t: str, f: Path, conv_name="conv", norm_name="bn") -> list[Entry]:
    return conv(f"{t}.{conv_name}", f + ("conv",)) + instance_norm(f"{t}.{norm_name}",
                                                                   f + ("norm",))


def resnet_table(model: ResNet) -> list[Entry]:
    """LIP-ResNet (bottleneck) in the official layout; plain ResNets in torchvision's."""
    if model.lip and model.block != "bottleneck":
        raise CheckpointError("LIP-ResNet-18/34 have no official PyTorch release or layout")
    table = conv("conv1", ("conv1",)) + batch_norm("bn1", ("bn1",))
    if model.lip:
        table += _head("maxpool.logit", ("maxpool", "logit"))
    depth = 3 if model.block == "bottleneck" else 2
    for i, blocks in enumerate(model.stage_sizes, start=1):
        for j in range(blocks):
            t, f = f"layer{i}.{j}", (f"layer{i}_{j}",)
            lip_block = model.lip and i > 1 and j == 0
            if lip_block:
                table += _trunk(f"{t}.bottleneck_shared.logit", f + ("bottleneck_shared",))
            for k in range(1, depth + 1):
                if lip_block and k == 2:
                    table += _head(f"{t}.conv2.0.postprocessing", f + ("lip", "logit"))
                    table += conv(f"{t}.conv2.1", f + ("conv2",))
                else:
                    table += conv(f"{t}.conv{k}", f + (f"conv{k}",))
                table += batch_norm(f"{t}.bn{k}", f + (f"bn{k}",))
            if lip_block:
                table += _head(f"{t}.downsample.lip.postprocessing",
                               f + ("downsample", "lip", "logit"))
            if j == 0 and (i > 1 or model.block == "bottleneck"):
                names = ("conv", "bn") if model.lip else ("0", "1")
                table += conv(f"{t}.downsample.{names[0]}", f + ("downsample", "conv"))
                table += batch_norm(f"{t}.downsample.{names[1]}", f + ("downsample", "bn"))
    return table + linear("fc", ("fc",))


def densenet_table(model: DenseNet) -> list[Entry]:
    """DenseNet-BC in torchvision's layout, LIP-DenseNet in the official one."""
    table = conv("features.conv0", ("conv0",)) + batch_norm("features.norm0", ("norm0",))
    if model.lip:
        table += _head("features.pool0.logit", ("pool0", "logit"), "conv1", "bn1")
    for i, layers in enumerate(model.block_sizes, start=1):
        for j in range(1, layers + 1):
            t, f = f"features.denseblock{i}.denselayer{j}", (f"denseblock{i}_denselayer{j}",)
            for k in (1, 2):
                table += batch_norm(f"{t}.norm{k}", f + (f"norm{k}",))
                table += conv(f"{t}.conv{k}", f + (f"conv{k}",))
        if i < len(model.block_sizes):
            t, f = f"features.transition{i}", (f"transition{i}",)
            table += batch_norm(f"{t}.norm", f + ("norm",)) + conv(f"{t}.conv", f + ("conv",))
            if model.lip:
                logit = f + ("pool", "logit")
                table += _trunk(f"{t}.pool.logit", logit + ("trunk",))
                table += _head(f"{t}.pool.logit", logit + ("head",), "conv3", "bn3")
    return table + batch_norm("features.norm5", ("norm5",)) + linear("classifier",
                                                                     ("classifier",))


def key_table(model) -> list[Entry]:
    """The key table of a model built by `lip_jax.models.create_model`."""
    if isinstance(model, ResNet):
        return resnet_table(model)
    if isinstance(model, DenseNet):
        return densenet_table(model)
    raise CheckpointError(f"no PyTorch layout for {type(model).__name__}")


def abstract_variables(model):
    """Shapes and dtypes of the model's variables, without computing them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def _lookup(tree, collection, path):
    node = tree.get(collection, {})
    for name in path:
        node = node.get(name) if isinstance(node, Mapping) else None
        if node is None:
            return None
    return node


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def from_torch_state_dict(name: str, state_dict: Mapping, **model_kw) -> dict:
    """Converts a PyTorch state_dict (key -> numpy array or torch tensor) to variables.

    Returns `{"params": ..., "batch_stats": ...}` of numpy arrays in the model's param
    dtype. Strict: raises `CheckpointError` naming every missing, unexpected and
    mis-shaped key. `model_kw` go to `create_model` (e.g. `num_classes`).
    """
    model = create_model(name, **model_kw)
    table = key_table(model)
    expected = abstract_variables(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    known = {e.torch_key for e in table}
    problems = [f"missing key {e.torch_key}" for e in table if e.torch_key not in given]
    problems += [f"unexpected key {k}" for k in given if k not in known]
    variables = {"params": {}, "batch_stats": {}}
    for entry in table:
        if entry.torch_key not in given:
            continue
        target = _lookup(expected, entry.collection, entry.path)
        value = _as_numpy(given[entry.torch_key])
        expected_shape = _torch_shape(entry.kind, target.shape)
        if list(value.shape) != expected_shape:
            problems.append(f"key {entry.torch_key} has shape {list(value.shape)}, expected "
                            f"{expected_shape}")
            continue
        node = variables[entry.collection]
        for part in entry.path[:-1]:
            node = node.setdefault(part, {})
        node[entry.path[-1]] = _to_flax(entry.kind, value).astype(target.dtype)
    if problems:
        raise CheckpointError(f"state_dict does not fit {name}:\n  " + "\n  ".join(problems))
    return variables


def to_torch_state_dict(name: str, variables: Mapping, **model_kw) -> dict[str, np.ndarray]:
    """Flax variables -> dict of numpy arrays in the PyTorch layout, in table order."""
    model = create_model(name, **model_kw)
    out = {}
    for entry in key_table(model):
        value = _lookup(variables, entry.collection, entry.path)
        if value is None:
            raise CheckpointError(f"variables lack {entry.collection}/{'/'.join(entry.path)} "
                                  f"(for {entry.torch_key})")
        out[entry.torch_key] = _to_torch(entry.kind, np.asarray(value))
        if entry.torch_key.endswith("running_var"):
            out[entry.torch_key[:-len("running_var")] + "num_batches_tracked"] = np.array(0)
    return out
