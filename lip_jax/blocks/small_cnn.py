"""A small CNN for 28x28 inputs (Fashion-MNIST) with pluggable downsampling: config, layer
declarations and forward math of both front-ends."""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.blocks import layers as D
from lip_jax.linen.downsample import POOLINGS, Pooling
from lip_jax.windows import positive_ints


@dataclasses.dataclass
class SmallCNNConfig:
    """Stages of 3x3 conv-BN-ReLU (`convs_per_stage[i]` convs of `widths[i]` channels; one
    stage per width, so a shorter `widths` alone makes a shallower network);
    between stages a k3/s2/p1 `pool` (LIP with a projection logit module by default;
    None: average pooling, padding excluded); a global pool ("avg" or "lip") and a
    linear classifier. `(N, 28, 28, C) -> (N, num_classes)`."""

    widths: Sequence[int] = (16, 32, 64)
    convs_per_stage: Sequence[int] = (1, 2, 2)
    pool: Pooling | None = POOLINGS["lip"]
    global_pool: str = "avg"
    num_classes: int = 10
    bn_group_size: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32


def small_cnn(c: SmallCNNConfig, in_features: int) -> D.Block:
    """The declared small CNN of `c` for images of `in_features` channels."""
    if len(positive_ints("widths", c.widths)) > len(positive_ints("convs_per_stage",
                                                                  c.convs_per_stage)):
        raise ValueError(f"widths {tuple(c.widths)} has more stages than convs_per_stage "
                         f"{tuple(c.convs_per_stage)} gives conv counts for")
    window = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    features, stages, layers = in_features, [], {}
    for i, (width, convs) in enumerate(zip(c.widths, c.convs_per_stage)):
        if i and c.pool is None:
            layers[f"pool{i}"] = functools.partial(
                nn.avg_pool, window_shape=window[0], strides=window[1], padding=window[2],
                count_include_pad=False)
        elif i:
            layers[f"pool{i}"] = D.Pool(c.pool, *window, features,
                                        D.logit("LogitHead", features))
        names = tuple((f"conv{i}_{j}", f"bn{i}_{j}") for j in range(convs))
        for conv, norm in names:
            layers[conv] = D.Conv(features, width, 3, 1, 1)
            layers[norm] = D.Norm(width)
            features = width
        stages.append(names)
    layers.update(global_pool=D.global_pool(c.global_pool, features),
                  fc=D.Dense(features, c.num_classes))
    return D.block(_small_cnn, stages=tuple(stages), in_features=in_features, **layers)


def _small_cnn(m, x):
    x = D.images(m, x)
    for i, names in enumerate(m.stages):
        if i:
            x = getattr(m, f"pool{i}")(x)
        for conv, norm in names:
            x = jax.nn.relu(getattr(m, norm)(getattr(m, conv)(x)))
    return m.fc(m.global_pool(x))
