"""DenseNet-BC with pluggable downsampling (Linen), layer for layer as torchvision /
official LIP. `pool=None` is torchvision's DenseNet-BC (max-pool stem, 2x2 average-pool
transitions); a `Pooling` (`lip_jax.linen.downsample`) goes to the stem and every
transition, with LIP-DenseNet's logit modules when it is LIP.

LIP-DenseNet: the stem max-pool becomes LIP with a 3x3 `SimplifiedLogit`, and each
transition's 2x2 average pool becomes LIP (k2/s2/p0) with a `BottleneckLogit` reading the
transition conv's output, the tensor it pools. As in the official code the logit convs
are NOT zero-initialised (its init hooks are never called), so LIP starts non-uniform.
Convs are kaiming-normal (fan-in); the classifier is PyTorch's default Linear init with
a zero bias.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.defaults import LOGIT_WIDTH
from lip_jax.linen.downsample import Pooling
from lip_jax.linen.logits import BottleneckLogit, SimplifiedLogit
from lip_jax.linen.zoo import batch_norm, pool_globally

fan_in_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
"""PyTorch `kaiming_normal_` with its defaults (fan_in, relu gain)."""

linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
"""PyTorch's default Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""


ModuleDef = Any


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv; concatenated to its input."""

    growth_rate: int
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="norm1")(x))
        y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
        y = nn.relu(self.norm(name="norm2")(y))
        y = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    """BN -> ReLU -> 1x1 conv halving the channels -> 2x2/2 pool: average, or
    `pool(name)`."""

    conv: ModuleDef
    norm: ModuleDef
    pool: ModuleDef | None = None

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm(name="norm")(x))
        x = self.conv(x.shape[-1] // 2, (1, 1), name="conv")(x)
        if self.pool is None:
            return nn.avg_pool(x, (2, 2), (2, 2))
        return self.pool(name="pool")(x)


class DenseNet(nn.Module):
    """DenseNet-BC with pluggable downsampling: `(N, H, W, 3)` -> `(N, num_classes)`
    logits, or with `features_only` a dict of dense-block outputs `"C2".."C5"` (strides
    4, 8, 16, 32; the last after `norm5` and ReLU).

    `pool`, `global_pool` and `bn_group_size` as in `ResNet`. Submodules are named after
    the official state_dict prefixes without `features.` (`denseblock1_denselayer1` for
    `features.denseblock1.denselayer1`).
    """

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

    @nn.compact
    def __call__(self, x, train: bool = False):
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, use_bias=False, padding="VALID",
                                 kernel_init=fan_in_init, **kinds)
        norm = batch_norm(train, self.bn_group_size, **kinds)
        logit_kw = dict(zero_init=False, kernel_init=fan_in_init, **kinds)
        x = conv(self.init_features, (7, 7), 2, padding=((3, 3), (3, 3)), name="conv0")(x)
        x = nn.relu(norm(name="norm0")(x))
        if self.pool is None:
            x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        else:
            x = self.pool((3, 3), (2, 2), ((1, 1), (1, 1)),
                          logit=SimplifiedLogit(**logit_kw, parent=None), name="pool0")(x)

        def pool(name):  # a fresh logit module for each transition
            logit = BottleneckLogit(width=self.logit_width, **logit_kw, parent=None)
            return self.pool((2, 2), (2, 2), "VALID", logit=logit, name=name)

        features = {}
        for i, layers in enumerate(self.block_sizes, start=1):
            for j in range(1, layers + 1):
                x = DenseLayer(self.growth_rate, self.bn_size, conv, norm,
                               name=f"denseblock{i}_denselayer{j}")(x)
            if i < len(self.block_sizes):
                features[f"C{i + 1}"] = x
                x = Transition(conv, norm, None if self.pool is None else pool,
                               name=f"transition{i}")(x)
        x = nn.relu(norm(name="norm5")(x))
        if self.features_only:
            return {**features, f"C{len(self.block_sizes) + 1}": x}
        x = pool_globally(x, self.global_pool, **kinds)
        return nn.Dense(self.num_classes, kernel_init=linear_init, name="classifier",
                        **kinds)(x)
