"""BatchNorm that keeps running statistics exactly as PyTorch's BatchNorm2d does, over the
whole batch or, as the paper trained (DDP, 32 images per GPU), over groups of examples."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

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
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stat_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), stat_dtype)
        compute = jnp.promote_types(jnp.promote_types(x.dtype, stat_dtype), jnp.float32)
        xc = x.astype(compute)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            xc = self._grouped(xc)  # (num_groups, G, ..., C)
            axes = tuple(range(1, xc.ndim - 1))
            mean = jnp.mean(xc, axes, keepdims=True)
            var = jnp.mean(jnp.square(xc - mean), axes, keepdims=True)
            if not self.is_initializing():
                count = xc[0].size // features  # per group
                unbiased = var * (count / max(count - 1, 1))
                over_groups = (0, *axes)
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * jnp.mean(
                    mean, over_groups).astype(stat_dtype)
                running_var.value = m * running_var.value + (1 - m) * jnp.mean(
                    unbiased, over_groups).astype(stat_dtype)
        mul = scale.astype(compute) * lax.rsqrt(var.astype(compute) + self.epsilon)
        y = (xc - mean.astype(compute)) * mul + bias.astype(compute)
        return y.reshape(x.shape).astype(self.dtype or jnp.result_type(x.dtype,
                                                                         self.param_dtype))

    def _grouped(self, x):
        """`(N, ..., C) -> (N / G, G, ..., C)`; G = N when `group_size` is 0."""
        n = x.shape[0]
        group = self.group_size or n
        if self.group_size < 0 or n % group:
            raise ValueError(f"BatchNorm {self.name}: group_size {self.group_size} must be >= 0 "
                             f"and divide the batch of {n} examples")
        return x.reshape(n // group, group, *x.shape[1:])
