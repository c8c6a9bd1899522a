"""ResNets with pluggable downsampling (Linen), layer for layer as torchvision and the
official LIP code.

`pool=None` is torchvision's ResNet (stem max-pool, stride-2 convs). With a `Pooling`
(`lip_jax.linen.downsample`) the network is LIP-ResNet with that pooling at LIP's
places; `pool=POOLINGS["lip"]` is the official LIP-ResNet:

LIP-ResNet (Bottleneck): the stem max-pool becomes LIP with a 3x3 `SimplifiedLogit`; in
the first block of stages 2-4 a `BottleneckTrunk` (`bottleneck_shared`) reads the block
input and feeds two `LogitHead`s: one for the LIP (k3/s2/p1) that, followed by a 1x1
conv, replaces the strided 3x3 conv, one for the LIP that pools the shortcut before its
1x1 conv. Official init: kaiming-normal (fan-out) convs, zeroed `bn3` scales and logit
heads, fc ~ N(0, 0.01).

LIP-ResNet-18/34 (BasicBlock; not in the official release): the stem as above; in each
stride-2 block one LIP, with a `BottleneckLogit` computed from the block input, pools the
input once, and both the main path (3x3 conv, stride 1) and the shortcut (1x1 conv) read
the pooled tensor. As in the bottleneck design LIP replaces every stride-2 spatial
reduction, and the main path keeps its two 3x3 convs.

Other poolings take the same places and the same convolutions; only LIP builds logit
modules (and the shared trunk). Submodules keep the official names of their places
(`maxpool`, `lip`, `downsample/lip`) whatever the pooling.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.defaults import LOGIT_WIDTH, conv_init
from lip_jax.linen.downsample import Pooling, apply_pool
from lip_jax.linen.logits import BottleneckLogit, BottleneckTrunk, LogitHead
from lip_jax.linen.zoo import batch_norm, pool_globally

ModuleDef = Any
P1 = ((1, 1), (1, 1))


class Shortcut(nn.Module):
    """Projection shortcut: [pool ->] 1x1 conv (stride) -> BN."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    pool: ModuleDef | None = None

    @nn.compact
    def __call__(self, x, logit_input=None):
        if self.pool is not None:
            x = apply_pool(self.pool(name="lip"), x, logit_input)
        x = self.conv(self.features, (1, 1), self.strides, name="conv")(x)
        return self.norm(name="bn")(x)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv), expansion 4."""

    planes: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    zero_init_residual: bool

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), name="conv1")(x)))
        y = self.conv(self.planes, (3, 3), self.strides, padding=P1, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(4 * self.planes, (1, 1), name="conv3")(y)
        y = _last_norm(self.norm, self.zero_init_residual, "bn3")(y)
        if x.shape != y.shape:
            x = Shortcut(4 * self.planes, self.strides, self.conv, self.norm,
                         name="downsample")(x)
        return nn.relu(y + x)


class PooledBottleneck(nn.Module):
    """The official stride-2 LIP bottleneck (first block of stages 2-4), any pooling: the
    pool (k3/s2/p1) then a 1x1 conv replace the strided 3x3 conv, and the shortcut is
    pooled before its 1x1 conv. With LIP a shared trunk feeds both logit heads."""

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    pool: Pooling
    head: ModuleDef
    trunk: ModuleDef
    zero_init_residual: bool

    @nn.compact
    def __call__(self, x):
        shared = self.trunk(name="bottleneck_shared")(x) if self.pool.uses_logit else None
        y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), name="conv1")(x)))
        pool = functools.partial(self.pool, (3, 3), (2, 2), P1)
        y = apply_pool(pool(logit=self.head(self.planes, parent=None), name="lip"), y, shared)
        y = self.conv(self.planes, (1, 1), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(4 * self.planes, (1, 1), name="conv3")(y)
        y = _last_norm(self.norm, self.zero_init_residual, "bn3")(y)
        shortcut_pool = functools.partial(pool, logit=self.head(x.shape[-1], parent=None))
        return nn.relu(y + Shortcut(4 * self.planes, 1, self.conv, self.norm, shortcut_pool,
                                    name="downsample")(x, shared))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs, stride on the first."""

    planes: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    zero_init_residual: bool

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.planes, (3, 3), self.strides, padding=P1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.planes, (3, 3), padding=P1, name="conv2")(y)
        y = _last_norm(self.norm, self.zero_init_residual, "bn2")(y)
        if x.shape != y.shape:
            x = Shortcut(self.planes, self.strides, self.conv, self.norm, name="downsample")(x)
        return nn.relu(y + x)


class PooledBasicBlock(nn.Module):
    """Stride-2 BasicBlock with a pool: pool the input once, then 3x3 conv / 1x1 shortcut."""

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    pool: Pooling
    logit: ModuleDef
    zero_init_residual: bool

    @nn.compact
    def __call__(self, x):
        x = self.pool((3, 3), (2, 2), P1, logit=self.logit(parent=None), name="lip")(x)
        y = self.conv(self.planes, (3, 3), padding=P1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.planes, (3, 3), padding=P1, name="conv2")(y)
        y = _last_norm(self.norm, self.zero_init_residual, "bn2")(y)
        return nn.relu(y + Shortcut(self.planes, 1, self.conv, self.norm, name="downsample")(x))


def _last_norm(norm, zero_init_residual, name):
    return norm(name=name, scale_init=nn.initializers.zeros) if zero_init_residual else norm(
        name=name)


class ResNet(nn.Module):
    """ResNet with pluggable downsampling: `(N, H, W, 3)` images -> `(N, num_classes)`
    logits, or with `features_only` a dict of stage outputs `"C2".."C5"` (strides 4, 8,
    16, 32; one per stage).

    `block` is "bottleneck" or "basic"; `pool` None (torchvision's strided convs) or a
    `Pooling` at LIP's places; `global_pool` "avg" or "lip" (`GlobalLIP` with a
    zero-initialised `ProjectionLogit`: it starts as the average); `width` the stem's
    channels (64; smaller for tiny test variants), `logit_width` the LIP trunk's (128).
    `remat_logits` recomputes the logit modules (stem, trunks, heads) in the backward
    pass instead of keeping their activations (LIP-ResNet-50 train step at batch 8,
    224x224: 1.27x ResNet-50's peak memory instead of 1.34x, for more compute).
    `bn_group_size` > 0 is passed to every BatchNorm as `group_size`. Submodules are
    named after the official state_dict prefixes (`layer2_0` for `layer2.0`).
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    pool: Pooling | None = None
    global_pool: str = "avg"
    features_only: bool = False
    num_classes: int = 1000
    width: int = 64
    logit_width: int = LOGIT_WIDTH
    zero_init_residual: bool = False
    remat_logits: bool = False
    bn_group_size: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @property
    def lip(self) -> bool:
        """Whether this is LIP-ResNet, i.e. its pooling is "lip"."""
        return self.pool is not None and self.pool.name == "lip"

    @nn.compact
    def __call__(self, x, train: bool = False):
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, use_bias=False, padding="VALID",
                                 kernel_init=conv_init, **kinds)
        norm = batch_norm(train, self.bn_group_size, **kinds)
        remat = nn.remat if self.remat_logits else (lambda module: module)
        head = functools.partial(remat(LogitHead), **kinds)
        trunk = functools.partial(remat(BottleneckTrunk), self.logit_width, **kinds)
        x = conv(self.width, (7, 7), 2, padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        if self.pool is None:
            x = nn.max_pool(x, (3, 3), (2, 2), P1)
        else:
            x = self.pool((3, 3), (2, 2), P1, logit=head(kernel_size=3, parent=None),
                          name="maxpool")(x)
        features = {}
        for i, blocks in enumerate(self.stage_sizes):
            planes = self.width * 2**i
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                name = f"layer{i + 1}_{j}"
                common = dict(conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
                              name=name)
                if self.pool is not None and strides == 2 and self.block == "bottleneck":
                    x = PooledBottleneck(planes, pool=self.pool, head=head, trunk=trunk,
                                         **common)(x)
                elif self.pool is not None and strides == 2:
                    logit = functools.partial(BottleneckLogit, width=self.logit_width, **kinds)
                    x = PooledBasicBlock(planes, pool=self.pool, logit=logit, **common)(x)
                else:
                    block = Bottleneck if self.block == "bottleneck" else BasicBlock
                    x = block(planes, strides, **common)(x)
            features[f"C{i + 2}"] = x
        if self.features_only:
            return features
        x = pool_globally(x, self.global_pool, **kinds)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        name="fc", **kinds)(x)

