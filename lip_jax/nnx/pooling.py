"""Local pooling layers (NNX): LIP and DPP, with the variable trees of `lip_jax.linen`."""

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from lip_jax.dpp import dpp_pool
from lip_jax.ops import Padding, lip_pool
from lip_jax.windows import logit_module, positive_int


def frozen(value):
    """Lists as tuples, at any depth (NNX keeps these attributes static); anything else
    as it is, for `lip_pool` to check and name."""
    return tuple(map(frozen, value)) if isinstance(value, (list, tuple)) else value


def _geometry(window_shape, strides, padding):
    return frozen(window_shape), frozen(strides), frozen(padding)


class LIP(nnx.Module):
    """Local importance pooling, `lip_pool(x, logit(x))`; see `lip_jax.linen.LIP`."""

    def __init__(self, logit: Callable, window_shape: Sequence[int] = (3, 3),
                 strides: Sequence[int] | None = (2, 2),
                 padding: Padding = ((1, 1), (1, 1)), implementation: str | None = None):
        self.logit = logit_module(logit)
        self.window_shape, self.strides, self.padding = _geometry(window_shape, strides,
                                                                  padding)
        self.implementation = implementation

    def __call__(self, x, logit_input=None):
        logits = self.logit(x if logit_input is None else logit_input)
        return lip_pool(x, logits, self.window_shape, self.strides, self.padding,
                        self.implementation,
                        logit_bounds=getattr(self.logit, "logit_bounds", None))


class DPP(nnx.Module):
    """Detail-preserving pooling with learned per-channel `alpha = exp(log_alpha)`,
    `lambda = exp(log_lambda)`; see `lip_jax.linen.DPP`."""

    def __init__(self, num_features: int, window_shape: Sequence[int] = (3, 3),
                 strides: Sequence[int] | None = (2, 2), padding: Padding = ((1, 1), (1, 1)),
                 asymmetric: bool = False, *, param_dtype=jnp.float32):
        self.window_shape, self.strides, self.padding = _geometry(window_shape, strides,
                                                                  padding)
        self.asymmetric = asymmetric
        num_features = positive_int("num_features", num_features)
        self.log_alpha = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.log_lambda = nnx.Param(jnp.zeros((num_features,), param_dtype))

    def __call__(self, x):
        return dpp_pool(x, jnp.exp(self.log_alpha[...]), jnp.exp(self.log_lambda[...]),
                        self.window_shape, self.strides, self.padding, self.asymmetric)
