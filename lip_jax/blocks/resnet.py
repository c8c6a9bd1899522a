"""ResNets with pluggable downsampling, layer for layer as torchvision and the official
LIP code: config, layer declarations and forward math of both front-ends.

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
modules (and the shared trunk). Layers keep the official names of their places
(`maxpool`, `lip`, `downsample/lip`) whatever the pooling, and blocks the official
state_dict prefixes (`layer2_0` for `layer2.0`).
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.blocks import layers as D
from lip_jax.defaults import LOGIT_WIDTH
from lip_jax.linen.downsample import Pooling, apply_pool
from lip_jax.windows import positive_int, positive_ints

relu = jax.nn.relu
K3S2P1 = ((3, 3), (2, 2), ((1, 1), (1, 1)))


@dataclasses.dataclass
class ResNetConfig:
    """A ResNet: `(N, H, W, C)` images -> `(N, num_classes)` logits, or with
    `features_only` a dict of stage outputs `"C2".."C5"` (strides 4, 8, 16, 32; one per
    stage).

    `block` is "bottleneck" or "basic"; `pool` None (torchvision's strided convs) or a
    `Pooling` at LIP's places; `global_pool` "avg" or "lip" (`GlobalLIP` with a
    zero-initialised `ProjectionLogit`: it starts as the average); `width` the stem's
    channels (64; smaller for tiny test variants), `logit_width` the LIP trunk's (128).
    `zero_init_residual` zeroes the scale of each block's last BatchNorm.
    `remat_logits` recomputes the logit modules (stem, trunks, heads) in the backward
    pass instead of keeping their activations (LIP-ResNet-50 train step at batch 8,
    224x224: 1.27x ResNet-50's peak memory instead of 1.34x, for more compute).
    `bn_group_size` > 0 is passed to every BatchNorm as `group_size`.
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


def resnet(c: ResNetConfig, in_features: int) -> D.Block:
    """The declared ResNet of `c` for images of `in_features` channels."""
    if c.block not in ("bottleneck", "basic"):
        raise ValueError(f'block must be "bottleneck" or "basic", got {c.block!r}')
    positive_ints("stage_sizes", c.stage_sizes)
    positive_int("width", c.width)
    positive_int("logit_width", c.logit_width)
    head = functools.partial(D.logit, "LogitHead", remat=c.remat_logits)
    layers = dict(conv1=D.Conv(in_features, c.width, 7, 2, 3), bn1=D.Norm(c.width))
    if c.pool is None:
        layers["maxpool"] = functools.partial(nn.max_pool, window_shape=K3S2P1[0],
                                              strides=K3S2P1[1], padding=K3S2P1[2])
    else:
        layers["maxpool"] = D.Pool(c.pool, *K3S2P1, c.width, head(c.width, kernel_size=3))
    features, stages = c.width, []
    for i, blocks in enumerate(c.stage_sizes):
        planes = c.width * 2**i
        names = tuple(f"layer{i + 1}_{j}" for j in range(blocks))
        for j, name in enumerate(names):
            strides = 2 if i > 0 and j == 0 else 1
            if c.pool is not None and strides == 2:
                layers[name] = _pooled_block(c, features, planes)
            else:
                layers[name] = _block(c, features, planes, strides)
            features = planes * (4 if c.block == "bottleneck" else 1)
        stages.append(names)
    if not c.features_only:
        layers.update(global_pool=D.global_pool(c.global_pool, features),
                      fc=D.Dense(features, c.num_classes, nn.initializers.normal(0.01)))
    return D.block(_resnet, stages=tuple(stages), features_only=c.features_only,
                   in_features=in_features, **layers)


def _resnet(m, x):
    x = D.images(m, x)
    x = m.maxpool(relu(m.bn1(m.conv1(x))))
    features = {}
    for i, names in enumerate(m.stages):
        for name in names:
            x = getattr(m, name)(x)
        features[f"C{i + 2}"] = x
    if m.features_only:
        return features
    return m.fc(m.global_pool(x))


def _block(c, in_features, planes, strides):
    """torchvision's Bottleneck (stride on the 3x3 conv, expansion 4) or BasicBlock (two
    3x3 convs, stride on the first), with a projection shortcut where the shape changes."""
    if c.block == "bottleneck":
        out = 4 * planes
        layers = dict(conv1=D.Conv(in_features, planes, 1), bn1=D.Norm(planes),
                      conv2=D.Conv(planes, planes, 3, strides, 1), bn2=D.Norm(planes),
                      conv3=D.Conv(planes, out, 1), bn3=D.Norm(out, c.zero_init_residual))
    else:
        out = planes
        layers = dict(conv1=D.Conv(in_features, planes, 3, strides, 1), bn1=D.Norm(planes),
                      conv2=D.Conv(planes, planes, 3, 1, 1),
                      bn2=D.Norm(planes, c.zero_init_residual))
    shortcut = None
    if strides != 1 or in_features != out:
        shortcut = _shortcut(in_features, out, strides)
    forward = _bottleneck if c.block == "bottleneck" else _basic
    return D.block(forward, downsample=shortcut, **layers)


def _bottleneck(m, x):
    y = relu(m.bn1(m.conv1(x)))
    y = relu(m.bn2(m.conv2(y)))
    return _add_shortcut(m, x, m.bn3(m.conv3(y)))


def _basic(m, x):
    y = relu(m.bn1(m.conv1(x)))
    return _add_shortcut(m, x, m.bn2(m.conv2(y)))


def _add_shortcut(m, x, y):
    return relu(y + (x if m.downsample is None else m.downsample(x)))


def _pooled_block(c, in_features, planes):
    """The stride-2 block of a pooled ResNet. Bottleneck (the official LIP block, any
    pooling): the pool (k3/s2/p1) then a 1x1 conv replace the strided 3x3 conv, and the
    shortcut is pooled before its 1x1 conv; with LIP a shared trunk feeds both logit
    heads. Basic: the block input is pooled once (LIP with a Bottleneck logit module),
    then a stride-1 BasicBlock with its 1x1 shortcut reads it."""
    if c.block == "basic":
        logit = D.logit("BottleneckLogit", in_features, width=c.logit_width,
                        remat=c.remat_logits)
        basic = _block(c, in_features, planes, 1)
        return D.block(_pooled_basic, lip=D.Pool(c.pool, *K3S2P1, in_features, logit),
                       **dict(basic.children))
    head = functools.partial(D.logit, "LogitHead", c.logit_width, remat=c.remat_logits)
    shared = None
    if c.pool.uses_logit:
        shared = D.logit("BottleneckTrunk", in_features, width=c.logit_width,
                         remat=c.remat_logits)
    out = 4 * planes
    shortcut = _shortcut(in_features, out, 1, D.Pool(c.pool, *K3S2P1, in_features,
                                                     head(features=in_features)))
    return D.block(_pooled_bottleneck, bottleneck_shared=shared,
                   conv1=D.Conv(in_features, planes, 1), bn1=D.Norm(planes),
                   lip=D.Pool(c.pool, *K3S2P1, planes, head(features=planes)),
                   conv2=D.Conv(planes, planes, 1), bn2=D.Norm(planes),
                   conv3=D.Conv(planes, out, 1), bn3=D.Norm(out, c.zero_init_residual),
                   downsample=shortcut)


def _pooled_basic(m, x):
    return _basic(m, m.lip(x))


def _pooled_bottleneck(m, x):
    shared = None if m.bottleneck_shared is None else m.bottleneck_shared(x)
    y = relu(m.bn1(m.conv1(x)))
    y = relu(m.bn2(m.conv2(apply_pool(m.lip, y, shared))))
    y = m.bn3(m.conv3(y))
    return relu(y + m.downsample(x, shared))


def _shortcut(in_features, features, strides, pool=None):
    """Projection shortcut: [pool ->] 1x1 conv (stride) -> BN."""
    return D.block(_project, lip=pool, conv=D.Conv(in_features, features, 1, strides),
                   bn=D.Norm(features))


def _project(m, x, logit_input=None):
    if m.lip is not None:
        x = apply_pool(m.lip, x, logit_input)
    return m.bn(m.conv(x))
