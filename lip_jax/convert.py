"""Official PyTorch state_dicts <-> Flax variables, through an explicit key table.

Layouts: LIP models use the official LIP release's keys (`lip_resnet-50.pth`, ...),
baselines torchvision's. Transforms: conv OIHW <-> HWIO, linear [out, in] <-> [in, out],
BatchNorm weight/bias/running_mean/running_var <-> scale/bias (params) and mean/var
(batch_stats), InstanceNorm weight/bias <-> scale/bias. `num_batches_tracked` is skipped
on the way in and written as 0 on the way out (PyTorch's strict loading expects it).
"""

import logging
import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.linen.densenet import DenseNet
from lip_jax.linen.resnet import ResNet
from lip_jax.models import create_model

Path = tuple[str, ...]
log = logging.getLogger("lip_jax")


class Entry(NamedTuple):
    torch_key: str
    collection: str  # "params" or "batch_stats"
    path: Path
    kind: str  # "conv", "linear" or "vector"

    @property
    def flax_path(self) -> Path:
        """(collection, *path), as `flat_variables` keys a variables tree."""
        return (self.collection,) + self.path


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
    pool = getattr(model, "pool", None)
    if pool is not None and pool.name != "lip":
        raise CheckpointError(f"no PyTorch layout for pool={pool.name!r}: the official "
                              "release has pool='lip' and its baselines ('strided') only")
    if isinstance(model, ResNet):
        return resnet_table(model)
    if isinstance(model, DenseNet):
        return densenet_table(model)
    raise CheckpointError(f"no PyTorch layout for {type(model).__name__}")


def abstract_variables(model):
    """Shapes and dtypes of the model's variables, without computing them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def flat_variables(tree, prefix: Path = ()) -> dict[Path, object]:
    """{(collection, *path): leaf} of a variables tree of nested mappings (keys as str)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    return {path: leaf for name, node in tree.items()
            for path, leaf in flat_variables(node, prefix + (str(name),)).items()}


def _few(items: list[str], shown=5) -> str:
    """The first `shown` items, with a count of the others."""
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def model_layout(name: str, **model_kw) -> tuple[list[Entry], dict[Path, object]]:
    """The key table of `create_model(name, **model_kw)` and its abstract variables
    ({(collection, *path): ShapeDtypeStruct}). Raises `CheckpointError` when they differ:
    variables without a PyTorch key (e.g. `global_pool="lip"`) or keys without a variable
    (e.g. `features_only=True` has no `fc`)."""
    model = create_model(name, **model_kw)
    table = key_table(model)
    expected = flat_variables(abstract_variables(model))
    mapped = {entry.flax_path for entry in table}
    unmapped = ["/".join(path) for path in expected if path not in mapped]
    absent = [entry.torch_key for entry in table if entry.flax_path not in expected]
    if unmapped or absent:
        gaps = [f"{len(items)} {what}: {_few(items)}" for what, items in (
            ("variables without a key", unmapped), ("keys without a variable", absent)) if items]
        raise CheckpointError(f"no PyTorch layout for {name} with {model_kw}: "
                              + "; ".join(gaps))
    return table, expected


def read_checkpoint(path) -> object:
    """What a checkpoint file holds: `.pth`, `.pt`, `.pth.tar` (torch), `.npz` or
    `.safetensors`. Torch files load with `weights_only=True` (no code runs). A file that
    does not read as its kind raises `CheckpointError` naming it."""
    path = str(path)
    if not path.endswith((".pth", ".pt", ".pth.tar", ".npz", ".safetensors")):
        raise CheckpointError(f"{path}: expected a .pth, .pt, .pth.tar, .npz or .safetensors "
                              "file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    kind = path.rsplit(".", 1)[-1] if not path.endswith(".pth.tar") else "pth.tar"
    try:
        if kind == "npz":
            return _read_npz(path)
        if kind == "safetensors":
            from safetensors.flax import load_file  # numpy has no bfloat16
            return load_file(path)
        import torch
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as error:  # not a checkpoint of its kind, truncated, or unsafe
        raise CheckpointError(f"{path} is not a .{kind} checkpoint that loads (without "
                              f"running code): {_load_problem(path, kind, error)}") from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file; a member that is not a `.npy` array raises."""
    with np.load(path) as f:
        arrays = dict(f)
    bad = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if bad:
        raise ValueError(f"{len(bad)} of its {len(arrays)} members are not .npy arrays, "
                         f"e.g. {bad[0]!r}")
    return arrays


def _load_problem(path: str, kind: str, error: Exception) -> str:
    """Why a checkpoint did not load, in words: what its first bytes are not, or the first
    line of the loader's error."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if kind in ("pth", "pt", "pth.tar") and not head.startswith((b"PK\x03\x04", b"\x80")):
        return "neither a zip archive nor a pickle, as torch.save writes"
    if kind == "npz" and not head.startswith(b"PK\x03\x04"):
        return "not a zip archive of .npy arrays, as numpy.savez writes"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def official_state_dict(checkpoint) -> dict:
    """The state_dict in what `torch.load` returned: the mapping itself, or its
    `"state_dict"` entry (the official `main.py` saves `{"epoch", "state_dict",
    "optimizer", ...}`), without the `module.` prefix that DistributedDataParallel adds."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint holding a {type(checkpoint).__name__}, not a "
                              "state_dict (a mapping of parameter name -> tensor)")
    if isinstance(checkpoint.get("state_dict"), Mapping):
        extra = sorted(str(k) for k in checkpoint if k != "state_dict")
        log.info("converting the checkpoint's 'state_dict' (ignoring %s)", ", ".join(extra))
        checkpoint = checkpoint["state_dict"]
    bad = [k for k in checkpoint if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"state_dict keys must be strings; got {len(bad)} others, "
                              f"e.g. {bad[0]!r} ({type(bad[0]).__name__})")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        log.info("stripped the 'module.' prefix of every key (a DistributedDataParallel "
                 "checkpoint)")
        return {k[len("module."):]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def finite_floats(key: str, value) -> np.ndarray:
    """`value` (a numpy, jax or dense torch array) as a numpy float array; a value that is
    not one, of a non-float dtype or with NaN/inf raises `CheckpointError` naming `key`.
    Float dtypes numpy lacks (torch's bfloat16) are widened to float32, exactly."""
    if isinstance(value, jax.ShapeDtypeStruct):
        raise CheckpointError(f"key {key} is a jax.ShapeDtypeStruct (a shape without "
                              "values), expected an array")
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
        value = _torch_numpy(key, value)
    value = np.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise CheckpointError(f"key {key} has dtype {value.dtype.name}, expected a "
                              "floating-point tensor")
    if not np.isfinite(value).all():
        raise CheckpointError(f"key {key} holds {np.count_nonzero(~np.isfinite(value))} "
                              "NaN or infinite values")
    return value


def _torch_numpy(key: str, tensor) -> np.ndarray:
    """A dense torch tensor's values; meta (shape-only) and sparse tensors raise."""
    if tensor.is_meta:
        raise CheckpointError(f"key {key} is a meta tensor (a shape without values), "
                              "expected one with values")
    if str(tensor.layout) != "torch.strided":
        raise CheckpointError(f"key {key} is a {tensor.layout} tensor, expected a dense "
                              "(torch.strided) one")
    if tensor.is_floating_point() and str(tensor.dtype) not in _NUMPY_FLOATS:
        tensor = tensor.float()  # exact; numpy has no bfloat16 or float8
    return tensor.detach().cpu().numpy()


def _checked(key: str, entry: Entry, value) -> np.ndarray:
    """`finite_floats(key, value)`, also refusing negative BatchNorm variances."""
    value = finite_floats(key, value)
    if entry.torch_key.endswith("running_var") and (value < 0).any():
        raise CheckpointError(f"key {key} holds {np.count_nonzero(value < 0)} negative "
                              "values; a variance is >= 0")
    return value


def _prefix_hint(unexpected: list[str], known: set[str]) -> str:
    """A sentence when a prefix on every unexpected key explains the mismatch."""
    common = os.path.commonprefix(unexpected)
    prefix = common[:common.rfind(".") + 1]
    if prefix and any(k[len(prefix):] in known for k in unexpected):
        return f"every unexpected key starts with {prefix!r}; the model's keys do not"
    return ""


def _mismatch_report(subject, missing, unexpected, misshaped, known) -> str:
    """A few keys of each kind of problem, with counts, and a prefix hint."""
    lines = [f"{subject}:"]
    for kind, items in (("missing key", missing), ("unexpected key", unexpected),
                        ("mis-shaped key", misshaped)):
        if items:
            lines.append(f"  {len(items)} {kind}{'s' * (len(items) > 1)}: {_few(items)}")
    hint = _prefix_hint(unexpected, known)
    return "\n".join(lines + ([f"  {hint}"] if hint else []))


def _set(tree: dict, path: Path, value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def from_torch_state_dict(name: str, state_dict, **model_kw) -> dict:
    """Converts a PyTorch state_dict (key -> numpy array or torch tensor) to variables.

    `state_dict` may also be a checkpoint dict holding it under `"state_dict"`, and its
    keys may carry DistributedDataParallel's `module.` prefix (`official_state_dict`).
    Returns `{"params": ..., "batch_stats": ...}` of numpy arrays in the model's param
    dtype: every variable of the model (`model_layout`). Strict: raises `CheckpointError`
    naming missing, unexpected and mis-shaped keys (a few of each, with counts), non-float
    dtypes, NaN/inf values and negative running variances.
    `model_kw` go to `create_model` (e.g. `num_classes`).
    """
    given = {k: v for k, v in official_state_dict(state_dict).items()
             if not k.endswith("num_batches_tracked")}
    table, expected = model_layout(name, **model_kw)
    known = {e.torch_key for e in table}
    missing = [e.torch_key for e in table if e.torch_key not in given]
    unexpected = [k for k in given if k not in known]
    misshaped = []
    variables = {}
    for entry in table:
        if entry.torch_key not in given:
            continue
        target = expected[entry.flax_path]
        value = _checked(entry.torch_key, entry, given[entry.torch_key])
        expected_shape = _torch_shape(entry.kind, target.shape)
        if list(value.shape) != expected_shape:
            misshaped.append(f"{entry.torch_key} {list(value.shape)} (expected "
                             f"{expected_shape})")
            continue
        _set(variables, entry.flax_path, _to_flax(entry.kind, value).astype(target.dtype))
    if missing or unexpected or misshaped:
        raise CheckpointError(_mismatch_report(f"state_dict does not fit {name}", missing,
                                               unexpected, misshaped, known))
    return variables


def to_torch_state_dict(name: str, variables: Mapping, **model_kw) -> dict[str, np.ndarray]:
    """Flax variables (`{"params": ..., "batch_stats": ...}` of arrays) -> dict of numpy
    arrays in the PyTorch layout, in table order, each in its own dtype but those torch
    lacks (bfloat16, float8: widened to float32, exactly). Strict as
    `from_torch_state_dict`: raises `CheckpointError` naming missing, unexpected and
    mis-shaped variables (`params/fc/kernel`) of `create_model(name, **model_kw)`,
    non-float dtypes, NaN/inf values and negative running variances."""
    if not isinstance(variables, Mapping):
        raise TypeError('variables must be a mapping {"params": ..., "batch_stats": ...}, '
                        f"got a {type(variables).__name__}")
    table, expected = model_layout(name, **model_kw)
    given = flat_variables(variables)
    missing = ["/".join(e.flax_path) for e in table if e.flax_path not in given]
    unexpected = ["/".join(path) for path in given if path not in expected]
    misshaped = []
    out = {}
    for entry in table:
        if entry.flax_path not in given:
            continue
        path = "/".join(entry.flax_path)
        value = _checked(path, entry, given[entry.flax_path])
        target = expected[entry.flax_path].shape
        if value.shape != target:
            misshaped.append(f"{path} {list(value.shape)} (expected {list(target)})")
            continue
        out[entry.torch_key] = _to_torch(entry.kind, _torch_dtype(value))
        if entry.torch_key.endswith("running_var"):
            out[entry.torch_key[:-len("running_var")] + "num_batches_tracked"] = np.array(0)
    if missing or unexpected or misshaped:
        raise CheckpointError(_mismatch_report(f"variables do not fit {name}", missing,
                                               unexpected, misshaped, set()))
    return out


def _torch_dtype(value: np.ndarray) -> np.ndarray:
    """`value` in a dtype torch shares with numpy: float16/32/64 as they are, others
    (bfloat16, float8) as float32, exactly."""
    if value.dtype in (np.float16, np.float32, np.float64):
        return value
    return value.astype(np.float32)
