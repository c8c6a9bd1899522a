"""BatchNorm that keeps running statistics exactly as PyTorch's BatchNorm2d does, over the
whole batch or, as the paper trained (DDP, 32 images per GPU), over groups of examples."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.blocks.batch_norm import batch_norm
from lip_jax.defaults import NORM_EPS


class BatchNorm(nn.Module):
    """Normalises over all axes but the last, `(N, ..., C) -> (N, ..., C)`.

    Train mode (`use_running_average=False`) normalises with the batch's mean and biased
    variance and updates `batch_stats` with `momentum` (0.9 here = PyTorch's 0.1) using the
    *unbiased* variance, as PyTorch does (`flax.linen.BatchNorm` uses the biased one).
    Statistics are computed in float32 or wider whatever `dtype` is.

    `group_size` 0: statistics over the whole batch (under `jax.jit` with a sharded batch,
    global synchronised statistics). `group_size` G > 0: the batch is cut into consecutive
    groups of G examples along the leading axis (N must be divisible by G), each
    normalised with its own statistics, like PyTorch DDP with G images per GPU; the
    running statistics move towards the average over groups of each group's mean and
    unbiased variance (the average of what every DDP rank would keep, where DDP saves
    rank 0's). With the batch sharded on "data", a group that lies within one device is
    normalised without cross-device communication.
    Variables: params `scale`, `bias`; batch_stats `mean`, `var`.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = NORM_EPS
    group_size: int = 0
    scale_init: Callable = nn.initializers.ones
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stat_dtype)
        var = self.variable("batch_stats", "var", jnp.ones, (features,), stat_dtype)
        y, running = batch_norm(x, scale, bias, mean.value, var.value,
                                train=not self.use_running_average, group_size=self.group_size,
                                momentum=self.momentum, epsilon=self.epsilon, dtype=self.dtype,
                                where=f"BatchNorm {self.name}")
        if not self.use_running_average and not self.is_initializing():
            mean.value, var.value = running
        return y
