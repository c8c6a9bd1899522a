"""Linen modules from the zoo's layer declarations (`lip_jax.blocks.layers`)."""

import dataclasses
import functools
from types import SimpleNamespace
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.blocks import layers as D
from lip_jax.linen import logits
from lip_jax.linen.batch_norm import BatchNorm
from lip_jax.linen.regions import GlobalLIP


@dataclasses.dataclass(frozen=True)
class Kit:
    """How declarations become Linen modules: BatchNorm mode (`train`) and groups, and
    the compute and parameter dtypes of every conv, norm, logit module and classifier."""

    train: bool = False
    bn_group_size: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def of(cls, config, train: bool) -> "Kit":
        """The kit of a zoo config (`bn_group_size`, `dtype`, `param_dtype` fields)."""
        return cls(train, config.bn_group_size, config.dtype, config.param_dtype)

    def run(self, block: D.Block, *inputs):
        """Builds `block`'s children as submodules of their names and runs its forward.
        Call inside a compact method."""
        layers = {name: self.build(child, name) for name, child in block.children}
        return block.forward(SimpleNamespace(**layers), *inputs)

    def build(self, decl, name: str | None = None):
        """A module named `name` (`name=None`: unbound, `parent=None`, for a layer that
        adopts it) for a declaration; anything else as it is."""
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        where = dict(name=name) if name else dict(parent=None)
        match decl:
            case D.Conv(_, features, k, strides, p, kernel_init):
                return nn.Conv(features, (k, k), strides, padding=((p, p), (p, p)),
                               use_bias=False, kernel_init=kernel_init, **kinds, **where)
            case D.Norm(_, zero_scale):
                init = nn.initializers.zeros if zero_scale else nn.initializers.ones
                return BatchNorm(use_running_average=not self.train,
                                 group_size=self.bn_group_size, scale_init=init, **kinds,
                                 **where)
            case D.Dense(_, features, kernel_init):
                return nn.Dense(features, kernel_init=kernel_init, **kinds, **where)
            case D.Logit(module, _, options, remat):
                cls = _remat(getattr(logits, module)) if remat else getattr(logits, module)
                return cls(**dict(options), **kinds, **where)
            case D.Pool(pooling, window_shape, strides, padding, _, logit):
                logit = self.build(logit) if pooling.uses_logit else None
                return pooling(window_shape, strides, padding, logit=logit, name=name)
            case D.GlobalLIP(logit):
                return GlobalLIP(self.build(logit), **where)
            case D.Block():
                return Block(decl, self, **where)
        return decl


class Block(nn.Module):
    """A declared `lip_jax.blocks.layers.Block` as a Linen module."""

    block: D.Block
    kit: Kit

    @nn.compact
    def __call__(self, *inputs):
        return self.kit.run(self.block, *inputs)


@functools.cache
def _remat(cls):
    return nn.remat(cls)
