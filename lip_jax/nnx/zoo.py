"""The model zoo in NNX: `create_model(name, ...)` builds any registered model from NNX
modules with the Linen model's variable tree, so Linen-layout variables (the converter's
output, `lip_jax.pretrained`, a training checkpoint's `params`/`batch_stats`) load by
path: `load_variables(model, variables)`, and `linen_variables(model)` gives them back.
The mapping to PyTorch's keys is `lip_jax.convert`'s key table; NNX adds none."""

from collections.abc import Mapping

import flax.traverse_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lip_jax import models
from lip_jax.convert import finite_floats, flat_variables
from lip_jax.blocks.densenet import DenseNetConfig
from lip_jax.blocks.resnet import ResNetConfig
from lip_jax.blocks.small_cnn import SmallCNNConfig
from lip_jax.nnx.densenet import DenseNet
from lip_jax.nnx.resnet import ResNet
from lip_jax.nnx.small_cnn import SmallCNN
from lip_jax.windows import positive_int

_FAMILIES = ((ResNetConfig, ResNet), (DenseNetConfig, DenseNet), (SmallCNNConfig, SmallCNN))

COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
"""Linen collection -> NNX variable type."""


def create_model(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 in_features: int | None = None, **kw) -> nnx.Module:
    """Model `name` (`lip_jax.models.list_models()`) as an NNX module, in train mode.

    Takes what `lip_jax.models.create_model` takes (`pool=`, `global_pool`,
    `features_only`, `bn_group_size`, `width=8`, ...) and `in_features`, the images'
    channels (default: those of the model's `input_shape`, 3, or 1 for the small CNNs).
    Call `model(images)` with `(N, H, W, in_features)` images; `model.eval()` uses the
    running statistics, `model.train()` the batch's.
    """
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs, e.g. nnx.Rngs(0), got a {type(rngs).__name__}")
    config = models.create_model(name, num_classes, dtype=dtype, **kw)
    if in_features is None:
        in_features = models.model_spec(name).input_shape[-1]
    module = next(m for kind, m in _FAMILIES if isinstance(config, kind))
    return module(config, in_features=positive_int("in_features", in_features),
                  rngs=rngs)


def linen_variables(model: nnx.Module) -> dict:
    """`{"params": ..., "batch_stats": ...}`: the model's arrays in the Linen layout
    (nested dicts)."""
    return {c: nnx.to_pure_dict(nnx.state(model, kind)) for c, kind in COLLECTIONS.items()}


def load_variables(model: nnx.Module, variables: Mapping) -> nnx.Module:
    """Sets `model`'s variables from Linen-layout `variables` (`{"params",
    "batch_stats"}`: nested mappings of arrays), cast to the model's dtypes, and returns
    the model. Every variable of the model must be given, with its shape, and nothing
    else, as finite floats: otherwise a ValueError names the missing, unexpected and
    mis-shaped ones (a `lip_jax.convert.CheckpointError` the first value that is not a
    finite float array, e.g. an abstract `jax.ShapeDtypeStruct`), and nothing is set."""
    if not isinstance(variables, Mapping):
        raise TypeError('variables must be a mapping {"params": ..., "batch_stats": ...}, '
                        f"got a {type(variables).__name__}")
    expected, given = flat_variables(linen_variables(model)), flat_variables(variables)
    problems = {
        "missing": [_show(p) for p in expected if p not in given],
        "unexpected": [_show(p) for p in given if p not in expected],
        "mis-shaped": [f"{_show(p)} {np.shape(given[p])} vs the model's "
                       f"{np.shape(expected[p])}" for p in expected
                       if p in given and np.shape(given[p]) != np.shape(expected[p])]}
    if any(problems.values()):
        raise ValueError(f"variables do not fit the {type(model).__name__}: " + "; ".join(
            f"{len(found)} {what}: {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}"
            for what, found in problems.items() if found))
    values = {path: jnp.asarray(finite_floats(_show(path), given[path]), expected[path].dtype)
              for path in expected}
    for collection, kind in COLLECTIONS.items():
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, flax.traverse_util.unflatten_dict({
            path[1:]: value for path, value in values.items() if path[0] == collection}))
        nnx.update(model, state)
    return model


def _show(path: tuple) -> str:
    return "/".join(path)
