"""Model registry: `create_model(name, ...)` -> a `flax.linen.Module`; `list_models()`;
`model_spec(name)` -> the model's `ModelSpec` (factory, input size, paper numbers).

Every model maps `(N, H, W, C)` images to `(N, num_classes)` logits:
`model.init(rng, images, train=False)` gives `{"params", "batch_stats"}`, and
`model.apply(variables, images, train=True, mutable=["batch_stats"])` trains.
Every model takes `pool=` one of `POOL_CHOICES` (or a `Pooling`): the names
`lip_resnet50`, `lip_densenet121`, `lip_cnn` are `resnet50`, `densenet121`, `cnn` with
`pool="lip"`, the plain names are their baselines (`pool="strided"`).
"""

from collections.abc import Callable
import difflib
from typing import NamedTuple

import jax.numpy as jnp

from lip_jax.linen.densenet import DenseNet
from lip_jax.linen.downsample import POOL_CHOICES, Pooling, pooling
from lip_jax.linen.resnet import ResNet
from lip_jax.linen.small_cnn import SmallCNN
from lip_jax.windows import positive_int

__all__ = ["POOL_CHOICES", "ModelSpec", "create_model", "list_models", "model_spec"]


class ModelSpec(NamedTuple):
    """One registered model: `factory(pool=..., **fields)` builds it; `input_shape` is
    `(H, W, C)` of its images; the paper's parameter count (millions) and multiply-adds
    (billions, at `input_shape`) where the LIP paper reports them."""

    factory: Callable
    input_shape: tuple[int, int, int] = (224, 224, 3)
    paper_params_m: float | None = None
    paper_gmacs: float | None = None


_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
           152: (3, 8, 36, 3)}


def _resnet(depth: int, default_pool: str):
    def build(pool: str | Pooling = default_pool, **kw):
        pool = pooling(pool)
        # The official LIP-ResNet zero-initialises bn3; torchvision's baselines do not.
        fields = dict(stage_sizes=_STAGES[depth], block="basic" if depth < 50 else "bottleneck",
                      zero_init_residual=pool is not None and pool.name == "lip")
        return ResNet(pool=pool, **{**fields, **kw})
    return build


def _with_pool(cls, default_pool: str, **fields):
    def build(pool: str | Pooling = default_pool, **kw):
        return cls(pool=pooling(pool), **{**fields, **kw})
    return build


_DENSENET121 = dict(block_sizes=(6, 12, 24, 16))
_PAPER = {"lip_resnet50": (23.9, 5.33), "lip_resnet101": (42.9, 9.06),
          "lip_densenet121": (8.7, 4.13), "resnet50": (25.6, 4.12), "resnet101": (44.5, 7.85),
          "densenet121": (8.0, 2.88)}
"""(params in millions, GMACs at 224x224) from the LIP paper's tables."""

_FACTORIES = {
    **{f"resnet{d}": _resnet(d, "strided") for d in _STAGES},
    **{f"lip_resnet{d}": _resnet(d, "lip") for d in _STAGES},
    "densenet121": _with_pool(DenseNet, "strided", **_DENSENET121),
    "lip_densenet121": _with_pool(DenseNet, "lip", **_DENSENET121),
}
_MODELS = {name: ModelSpec(factory, (224, 224, 3), *_PAPER.get(name, (None, None)))
           for name, factory in _FACTORIES.items()}
_MODELS["lip_cnn"] = ModelSpec(_with_pool(SmallCNN, "lip"), (28, 28, 1))  # the default job
_MODELS["cnn"] = ModelSpec(_with_pool(SmallCNN, "strided"), (28, 28, 1))


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of model `name`; an unknown name raises ValueError with the closest
    known names."""
    if not isinstance(name, str) or name not in _MODELS:
        close = difflib.get_close_matches(name, list_models(), n=3) if isinstance(name, str) else []
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}known models: "
                         f"{', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, num_classes: int = 1000, *, dtype=jnp.float32, **kw):
    """Builds model `name`; `dtype` is the compute dtype (params stay `param_dtype`, f32).

    Extra keyword arguments override architecture fields: `pool` (one of `POOL_CHOICES`
    or a `Pooling`; default the name's own), `global_pool` ("avg" or "lip"),
    `features_only` (ResNets and DenseNets: a dict of stage outputs "C2".."C5"),
    `width=8` for a tiny test variant of a ResNet or `block_sizes=(1, 1)` for a DenseNet.
    The model is also its family's config (`lip_jax.blocks`), from which
    `lip_jax.nnx.create_model` builds the NNX model.
    """
    spec = model_spec(name)
    if "param_dtype" in kw:
        kw["param_dtype"] = _float_dtype(kw["param_dtype"], "param_dtype", optional=False)
    return spec.factory(num_classes=positive_int("num_classes", num_classes),
                        dtype=_float_dtype(dtype), **kw)


def _float_dtype(dtype, name: str = "dtype", optional: bool = True):
    """`dtype`, a floating dtype (or, if `optional`, None: Flax's, from the inputs); a
    TypeError naming `name` otherwise."""
    try:
        if optional if dtype is None else jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            return dtype
    except TypeError:
        pass
    raise TypeError(f"{name} must be a floating dtype such as jnp.bfloat16, got {dtype!r}")
