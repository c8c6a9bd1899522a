"""A small CNN for 28x28 inputs (Fashion-MNIST), with LIP or average-pool downsampling."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.defaults import conv_init
from lip_jax.linen.batch_norm import BatchNorm
from lip_jax.linen.logits import ProjectionLogit
from lip_jax.linen.pooling import LIP


class SmallCNN(nn.Module):
    """Stages of 3x3 conv-BN-ReLU (`convs_per_stage[i]` convs of `widths[i]` channels);
    between stages a k3/s2/p1 LIP with a projection logit module (or average pooling,
    `lip=False`); global average pool and a linear classifier.
    `(N, 28, 28, C) -> (N, num_classes)`."""

    widths: Sequence[int] = (16, 32, 64)
    convs_per_stage: Sequence[int] = (1, 2, 2)
    lip: bool = True
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                                 use_bias=False, kernel_init=conv_init, **kinds)
        norm = functools.partial(BatchNorm, use_running_average=not train, **kinds)
        for i, (width, convs) in enumerate(zip(self.widths, self.convs_per_stage)):
            if i:
                if self.lip:
                    x = LIP(ProjectionLogit(**kinds, parent=None), name=f"pool{i}")(x)
                else:
                    x = nn.avg_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)),
                                    count_include_pad=False)
            for j in range(convs):
                x = conv(width, name=f"conv{i}_{j}")(x)
                x = nn.relu(norm(name=f"bn{i}_{j}")(x))
        return nn.Dense(self.num_classes, name="fc", **kinds)(jnp.mean(x, axis=(1, 2)))
