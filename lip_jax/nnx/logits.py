"""Logit modules of LIP (NNX), with the variable tree of `lip_jax.linen.logits`.

All map `(N, *spatial, in_features)` to logits `(N, *spatial, features)` in (0, 12),
float32. `spatial_ndim` (default 2) sets the conv kernels' rank.
"""

import functools
from typing import ClassVar

import jax.numpy as jnp
from flax import nnx

from lip_jax.defaults import (GATE_COEFF, LOGIT_BOUNDS, LOGIT_WIDTH, NORM_EPS, conv_init,
                              logit_conv_padding, logit_features, zeros_init)
from lip_jax.ops import soft_gate
from lip_jax.windows import positive_int


def _conv(in_features, features, kernel_size, ndim, kernel_init, dtype, param_dtype, rngs):
    return nnx.Conv(in_features, features, (kernel_size,) * ndim,
                    padding=logit_conv_padding(kernel_size, ndim), use_bias=False,
                    kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _check_input(module, x, in_features: int, spatial_ndim: int):
    """A ValueError unless `x` is `(N, *spatial, in_features)` with `spatial_ndim` spatial
    dims (nnx.Conv would take a missing batch dim for a spatial one)."""
    if jnp.ndim(x) != spatial_ndim + 2 or jnp.shape(x)[-1] != in_features:
        raise ValueError(f"{type(module).__name__} inputs of shape {jnp.shape(x)}: expected "
                         f"(N, {spatial_ndim} spatial dims, {in_features}), as built "
                         f"(in_features={in_features}, spatial_ndim={spatial_ndim})")


def InstanceNorm(num_features, *, dtype=None, param_dtype=jnp.float32, rngs):
    """The official InstanceNorm: affine, eps 1e-5, biased variance, no running statistics."""
    return nnx.InstanceNorm(num_features, epsilon=NORM_EPS, use_fast_variance=False,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class LogitHead(nnx.Module):
    """conv (k x k, bias-free) -> InstanceNorm -> SoftGate; ends every logit module."""

    logit_bounds: ClassVar = LOGIT_BOUNDS  # read by LIP layers (`lip_pool`)

    def __init__(self, in_features: int, features: int | None = None, *, kernel_size: int = 1,
                 zero_init: bool = True, kernel_init=conv_init, spatial_ndim: int = 2,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        features = logit_features(features, positive_int("in_features", in_features))
        self.in_features = in_features
        self.spatial_ndim = positive_int("spatial_ndim", spatial_ndim)
        self.conv = _conv(in_features, features, kernel_size, self.spatial_ndim,
                          zeros_init if zero_init else kernel_init, dtype, param_dtype, rngs)
        self.norm = InstanceNorm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        _check_input(self, x, self.in_features, self.spatial_ndim)
        return soft_gate(self.norm(self.conv(x)), GATE_COEFF)


ProjectionLogit = functools.partial(LogitHead, kernel_size=1)
"""The paper's projection module: 1x1 conv -> IN -> SoftGate."""

SimplifiedLogit = functools.partial(LogitHead, kernel_size=3)
"""The official stem module (`SimplifiedLIP`): 3x3 conv -> IN -> SoftGate."""


class BottleneckTrunk(nnx.Module):
    """1x1 conv -> IN -> ReLU -> 3x3 conv -> IN -> ReLU, `width` channels."""

    def __init__(self, in_features: int, width: int = LOGIT_WIDTH, *, kernel_init=conv_init,
                 spatial_ndim: int = 2, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_features = positive_int("in_features", in_features)
        self.spatial_ndim = positive_int("spatial_ndim", spatial_ndim)
        args = dict(ndim=self.spatial_ndim, kernel_init=kernel_init, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)
        norm = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        width = positive_int("width", width)
        self.conv1 = _conv(in_features, width, 1, **args)
        self.norm1 = InstanceNorm(width, **norm)
        self.conv2 = _conv(width, width, 3, **args)
        self.norm2 = InstanceNorm(width, **norm)

    def __call__(self, x):
        _check_input(self, x, self.in_features, self.spatial_ndim)
        x = nnx.relu(self.norm1(self.conv1(x)))
        return nnx.relu(self.norm2(self.conv2(x)))


class BottleneckLogit(nnx.Module):
    """The paper's Bottleneck-`width` logit module: `BottleneckTrunk` then a 1x1 `LogitHead`."""

    logit_bounds: ClassVar = LOGIT_BOUNDS  # read by LIP layers (`lip_pool`)

    def __init__(self, in_features: int, features: int | None = None, *,
                 width: int = LOGIT_WIDTH, zero_init: bool = True, kernel_init=conv_init,
                 spatial_ndim: int = 2, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(kernel_init=kernel_init, spatial_ndim=spatial_ndim, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
        self.trunk = BottleneckTrunk(in_features, width, **kw)
        self.head = LogitHead(width, logit_features(features, in_features), zero_init=zero_init,
                              **kw)

    def __call__(self, x):
        return self.head(self.trunk(x))
