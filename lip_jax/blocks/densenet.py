"""DenseNet-BC with pluggable downsampling, layer for layer as torchvision / official LIP:
config, layer declarations and forward math of both front-ends.

`pool=None` is torchvision's DenseNet-BC (max-pool stem, 2x2 average-pool transitions); a
`Pooling` (`lip_jax.linen.downsample`) goes to the stem and every transition, with
LIP-DenseNet's logit modules when it is LIP.

LIP-DenseNet: the stem max-pool becomes LIP with a 3x3 `SimplifiedLogit`, and each
transition's 2x2 average pool becomes LIP (k2/s2/p0) with a `BottleneckLogit` reading the
transition conv's output, the tensor it pools. As in the official code the logit convs
are NOT zero-initialised (its init hooks are never called), so LIP starts non-uniform.
Convs are kaiming-normal (fan-in); the classifier is PyTorch's default Linear init with
a zero bias. Layers are named after the official state_dict prefixes without
`features.` (`denseblock1_denselayer1` for `features.denseblock1.denselayer1`).
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.blocks import layers as D
from lip_jax.defaults import LOGIT_WIDTH
from lip_jax.linen.downsample import Pooling
from lip_jax.windows import positive_int, positive_ints

relu = jax.nn.relu

fan_in_init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
"""PyTorch `kaiming_normal_` with its defaults (fan_in, relu gain)."""

linear_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
"""PyTorch's default Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""


@dataclasses.dataclass
class DenseNetConfig:
    """A DenseNet-BC: `(N, H, W, C)` -> `(N, num_classes)` logits, or with `features_only`
    a dict of dense-block outputs `"C2".."C5"` (strides 4, 8, 16, 32; the last after
    `norm5` and ReLU). `pool`, `global_pool` and `bn_group_size` as in `ResNetConfig`."""

    block_sizes: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    init_features: int = 64
    bn_size: int = 4
    pool: Pooling | None = None
    global_pool: str = "avg"
    features_only: bool = False
    num_classes: int = 1000
    logit_width: int = LOGIT_WIDTH
    bn_group_size: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @property
    def lip(self) -> bool:
        """Whether this is LIP-DenseNet, i.e. its pooling is "lip"."""
        return self.pool is not None and self.pool.name == "lip"


def densenet(c: DenseNetConfig, in_features: int) -> D.Block:
    """The declared DenseNet of `c` for images of `in_features` channels."""
    positive_ints("block_sizes", c.block_sizes)
    for name in ("growth_rate", "init_features", "bn_size", "logit_width"):
        positive_int(name, getattr(c, name))
    conv = functools.partial(D.Conv, kernel_init=fan_in_init)
    logit = functools.partial(D.logit, zero_init=False, kernel_init=fan_in_init)
    features = c.init_features
    layers = dict(conv0=conv(in_features, features, 7, 2, 3), norm0=D.Norm(features))
    if c.pool is None:
        layers["pool0"] = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2),
                                            padding=((1, 1), (1, 1)))
    else:
        layers["pool0"] = D.Pool(c.pool, (3, 3), (2, 2), ((1, 1), (1, 1)), features,
                                 logit("LogitHead", features, kernel_size=3))
    blocks, wide = [], c.bn_size * c.growth_rate
    for i, size in enumerate(c.block_sizes, start=1):
        names = tuple(f"denseblock{i}_denselayer{j}" for j in range(1, size + 1))
        for name in names:
            layers[name] = D.block(
                _dense_layer, norm1=D.Norm(features), conv1=conv(features, wide, 1),
                norm2=D.Norm(wide), conv2=conv(wide, c.growth_rate, 3, 1, 1))
            features += c.growth_rate
        blocks.append(names)
        if i < len(c.block_sizes):
            half = features // 2
            if c.pool is None:
                pool = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
            else:
                pool = D.Pool(c.pool, (2, 2), (2, 2), "VALID", half, logit(
                    "BottleneckLogit", half, width=c.logit_width))
            layers[f"transition{i}"] = D.block(_transition, norm=D.Norm(features),
                                               conv=conv(features, half, 1), pool=pool)
            features = half
    layers["norm5"] = D.Norm(features)
    if not c.features_only:
        layers.update(global_pool=D.global_pool(c.global_pool, features),
                      classifier=D.Dense(features, c.num_classes, linear_init))
    return D.block(_densenet, blocks=tuple(blocks), features_only=c.features_only,
                   in_features=in_features, **layers)


def _densenet(m, x):
    x = D.images(m, x)
    x = m.pool0(relu(m.norm0(m.conv0(x))))
    features = {}
    for i, names in enumerate(m.blocks, start=1):
        for name in names:
            x = getattr(m, name)(x)
        if i < len(m.blocks):
            features[f"C{i + 1}"] = x
            x = getattr(m, f"transition{i}")(x)
    x = relu(m.norm5(x))
    if m.features_only:
        return {**features, f"C{len(m.blocks) + 1}": x}
    return m.classifier(m.global_pool(x))


def _dense_layer(m, x):
    """BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv; concatenated to its input."""
    y = m.conv1(relu(m.norm1(x)))
    y = m.conv2(relu(m.norm2(y)))
    return jnp.concatenate([x, y], axis=-1)


def _transition(m, x):
    """BN -> ReLU -> 1x1 conv halving the channels -> 2x2/2 pool."""
    return m.pool(m.conv(relu(m.norm(x))))
