"""Model registry: `create_model(name, ...)` -> a `flax.linen.Module`; `list_models()`.

Every model maps `(N, H, W, 3)` images to `(N, num_classes)` logits:
`model.init(rng, images, train=False)` gives `{"params", "batch_stats"}`, and
`model.apply(variables, images, train=True, mutable=["batch_stats"])` trains.
"""

import functools

import jax.numpy as jnp

from lip_jax.linen.densenet import DenseNet
from lip_jax.linen.resnet import ResNet
from lip_jax.linen.small_cnn import SmallCNN

_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
           152: (3, 8, 36, 3)}


def _resnet(depth, lip):
    block = "basic" if depth < 50 else "bottleneck"
    # The official LIP-ResNet zero-initialises bn3; torchvision's baselines do not.
    return functools.partial(ResNet, stage_sizes=_STAGES[depth], block=block, lip=lip,
                             zero_init_residual=lip)


_MODELS = {
    **{f"resnet{d}": _resnet(d, False) for d in _STAGES},
    **{f"lip_resnet{d}": _resnet(d, True) for d in _STAGES},
    "densenet121": functools.partial(DenseNet, block_sizes=(6, 12, 24, 16)),
    "lip_densenet121": functools.partial(DenseNet, block_sizes=(6, 12, 24, 16), lip=True),
    "lip_cnn": functools.partial(SmallCNN, lip=True),  # the Fashion-MNIST default job
    "cnn": functools.partial(SmallCNN, lip=False),
}


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int = 1000, dtype=jnp.float32, **kw):
    """Builds model `name`; `dtype` is the compute dtype (params stay `param_dtype`, f32).

    Extra keyword arguments override architecture fields, e.g. `width=8` for a tiny test
    variant of a ResNet or `block_sizes=(1, 1)` for a DenseNet.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, dtype=dtype, **kw)
