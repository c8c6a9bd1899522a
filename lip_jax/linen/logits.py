"""Logit modules of LIP (Linen): small networks whose output feeds `lip_pool`.

All map `(N, *spatial, C_in)` to logits `(N, *spatial, features)` in (0, 12), float32.
Variable names match `lip_jax.nnx.logits`.
"""

import functools

from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.defaults import (GATE_COEFF, LOGIT_BOUNDS, LOGIT_WIDTH, NORM_EPS, conv_init,
                              logit_conv_padding, logit_features, zeros_init)
from lip_jax.ops import soft_gate
from lip_jax.windows import positive_int

InstanceNorm = functools.partial(nn.InstanceNorm, epsilon=NORM_EPS, use_fast_variance=False)
"""The official InstanceNorm: affine, eps 1e-5, biased variance, no running statistics."""


def _conv(features, kernel_size, ndim, kernel_init, dtype, param_dtype, name):
    return nn.Conv(features, (kernel_size,) * ndim, padding=logit_conv_padding(kernel_size, ndim),
                   use_bias=False, kernel_init=kernel_init, dtype=dtype,
                   param_dtype=param_dtype, name=name)


class LogitHead(nn.Module):
    """conv (k x k, bias-free) -> InstanceNorm -> SoftGate; ends every logit module.

    `features` defaults to the input's; `zero_init` zeroes the conv so that LIP starts as
    average pooling (the official LIP-ResNet init), else `kernel_init` initialises it.
    """

    logit_bounds: ClassVar = LOGIT_BOUNDS  # read by LIP layers (`lip_pool`)

    features: int | None = None
    kernel_size: int = 1
    zero_init: bool = True
    kernel_init: Callable = conv_init
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = zeros_init if self.zero_init else self.kernel_init
        x = _conv(logit_features(self.features, x.shape[-1]), self.kernel_size, x.ndim - 2,
                  init, self.dtype, self.param_dtype, "conv")(x)
        x = InstanceNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        return soft_gate(x, GATE_COEFF)


ProjectionLogit = functools.partial(LogitHead, kernel_size=1)
"""The paper's projection module: 1x1 conv -> IN -> SoftGate."""

SimplifiedLogit = functools.partial(LogitHead, kernel_size=3)
"""The official stem module (`SimplifiedLIP`): 3x3 conv -> IN -> SoftGate."""


class BottleneckTrunk(nn.Module):
    """1x1 conv -> IN -> ReLU -> 3x3 conv -> IN -> ReLU, `width` channels.

    One trunk can feed several `LogitHead`s, as in LIP-ResNet's stride-2 blocks.
    """

    width: int = LOGIT_WIDTH
    kernel_init: Callable = conv_init
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = positive_int("width", self.width)
        for i, k in ((1, 1), (2, 3)):
            x = _conv(width, k, x.ndim - 2, self.kernel_init, self.dtype, self.param_dtype,
                      f"conv{i}")(x)
            x = InstanceNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm{i}")(x)
            x = nn.relu(x)
        return x


class BottleneckLogit(nn.Module):
    """The paper's Bottleneck-`width` logit module: `BottleneckTrunk` then a 1x1 `LogitHead`."""

    logit_bounds: ClassVar = LOGIT_BOUNDS  # read by LIP layers (`lip_pool`)

    features: int | None = None
    width: int = LOGIT_WIDTH
    zero_init: bool = True
    kernel_init: Callable = conv_init
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = logit_features(self.features, x.shape[-1])
        h = BottleneckTrunk(self.width, self.kernel_init, self.dtype, self.param_dtype,
                            name="trunk")(x)
        return LogitHead(features, 1, self.zero_init, self.kernel_init, self.dtype,
                         self.param_dtype, name="head")(h)
