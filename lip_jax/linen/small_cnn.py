"""A small CNN for 28x28 inputs (Fashion-MNIST) with pluggable downsampling."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.defaults import conv_init
from lip_jax.linen.downsample import POOLINGS, Pooling
from lip_jax.linen.logits import ProjectionLogit
from lip_jax.linen.zoo import batch_norm, pool_globally


class SmallCNN(nn.Module):
    """Stages of 3x3 conv-BN-ReLU (`convs_per_stage[i]` convs of `widths[i]` channels);
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

    @nn.compact
    def __call__(self, x, train: bool = False):
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                                 use_bias=False, kernel_init=conv_init, **kinds)
        norm = batch_norm(train, self.bn_group_size, **kinds)
        for i, (width, convs) in enumerate(zip(self.widths, self.convs_per_stage)):
            if i:
                if self.pool is None:
                    x = nn.avg_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)),
                                    count_include_pad=False)
                else:
                    x = self.pool((3, 3), (2, 2), ((1, 1), (1, 1)),
                                  logit=ProjectionLogit(**kinds, parent=None),
                                  name=f"pool{i}")(x)
            for j in range(convs):
                x = conv(width, name=f"conv{i}_{j}")(x)
                x = nn.relu(norm(name=f"bn{i}_{j}")(x))
        x = pool_globally(x, self.global_pool, **kinds)
        return nn.Dense(self.num_classes, name="fc", **kinds)(x)
