"""NNX modules from the zoo's layer declarations (`lip_jax.blocks.layers`): each child
becomes an attribute of its declared name, so the variable tree is the Linen one."""

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
from flax import nnx

from lip_jax.blocks import layers as D
from lip_jax.nnx import logits
from lip_jax.nnx.batch_norm import BatchNorm
from lip_jax.nnx.regions import GlobalLIP


@dataclasses.dataclass(frozen=True)
class Kit:
    """How declarations become NNX modules: the `rngs` that initialise them, BatchNorm
    groups, and the compute and parameter dtypes of every conv, norm, logit module and
    classifier. BatchNorms start in train mode (`model.eval()` switches)."""

    rngs: nnx.Rngs
    bn_group_size: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def of(cls, config, rngs: nnx.Rngs) -> "Kit":
        """The kit of a zoo config (`bn_group_size`, `dtype`, `param_dtype` fields)."""
        return cls(rngs, config.bn_group_size, config.dtype, config.param_dtype)

    def build(self, decl):
        """The module of a declaration; anything else as it is."""
        kinds = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=self.rngs)
        match decl:
            case D.Conv(in_features, features, k, strides, p, kernel_init):
                return nnx.Conv(in_features, features, (k, k), strides,
                                padding=((p, p), (p, p)), use_bias=False,
                                kernel_init=kernel_init, **kinds)
            case D.Norm(features, zero_scale):
                init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
                return BatchNorm(features, group_size=self.bn_group_size, scale_init=init,
                                 **kinds)
            case D.Dense(in_features, features, kernel_init):
                return nnx.Linear(in_features, features, kernel_init=kernel_init, **kinds)
            case D.Logit(module, in_features, options, remat):
                cls = _remat(getattr(logits, module)) if remat else getattr(logits, module)
                return cls(in_features, **dict(options), **kinds)
            case D.Pool(pooling, window_shape, strides, padding, in_features, logit):
                logit = self.build(logit) if pooling.uses_logit else None
                return pooling.nnx(window_shape, strides, padding, logit=logit,
                                   num_features=in_features, rngs=self.rngs)
            case D.GlobalLIP(logit):
                return GlobalLIP(self.build(logit))
            case D.Block():
                return Block(decl, self)
        return decl


class Block(nnx.Module):
    """A declared `lip_jax.blocks.layers.Block` as an NNX module."""

    def __init__(self, block: D.Block, kit: Kit):
        self._forward = block.forward
        for name, child in block.children:
            setattr(self, name, kit.build(child))

    def __call__(self, *inputs):
        return self._forward(self, *inputs)


@functools.cache
def _remat(cls):
    """`cls` whose calls are recomputed in the backward pass (`nnx.remat`)."""
    return type(cls.__name__, (cls,), {"__call__": nnx.remat(cls.__call__)})
