"""BatchNorm (NNX) with PyTorch's running statistics, over the whole batch or over groups
of examples; the math and variables of `lip_jax.linen.BatchNorm`."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lip_jax.blocks.batch_norm import batch_norm
from lip_jax.defaults import NORM_EPS
from lip_jax.windows import positive_int


class BatchNorm(nnx.Module):
    """Normalises over all axes but the last, `(N, ..., C) -> (N, ..., C)`; see
    `lip_jax.linen.batch_norm.BatchNorm` (train mode: the batch's statistics, per group of
    `group_size` examples when > 0, and running statistics updated with the unbiased
    variance; `eval()` mode: the running statistics).

    `use_running_average` is set by `model.train()` / `model.eval()` and `nnx.view`, or
    per call. Variables: `nnx.Param` `scale`, `bias`; `nnx.BatchStat` `mean`, `var`.
    """

    def __init__(self, num_features: int, *, use_running_average: bool = False,
                 momentum: float = 0.9, epsilon: float = NORM_EPS, group_size: int = 0,
                 scale_init: Callable = jax.nn.initializers.ones, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        shape = (positive_int("num_features", num_features),)
        stat_dtype = jnp.promote_types(param_dtype, jnp.float32)
        self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros(shape, param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros(shape, stat_dtype))
        self.var = nnx.BatchStat(jnp.ones(shape, stat_dtype))
        self.use_running_average = use_running_average
        self.momentum, self.epsilon, self.group_size = momentum, epsilon, group_size
        self.dtype = dtype

    def __call__(self, x, use_running_average: bool | None = None):
        train = not (self.use_running_average if use_running_average is None
                     else use_running_average)
        y, running = batch_norm(x, self.scale[...], self.bias[...], self.mean[...],
                                self.var[...], train=train, group_size=self.group_size,
                                momentum=self.momentum, epsilon=self.epsilon,
                                dtype=self.dtype)
        if train:
            self.mean[...], self.var[...] = running
        return y

    def set_view(self, use_running_average: bool | None = None):
        """For `nnx.view(model, use_running_average=...)`."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
