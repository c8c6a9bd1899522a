"""BatchNorm that keeps running statistics exactly as PyTorch's BatchNorm2d does."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from lip_jax.defaults import NORM_EPS


class BatchNorm(nn.Module):
    """Normalises over all axes but the last, `(..., C) -> (..., C)`.

    Train mode (`use_running_average=False`) normalises with the batch's biased variance
    and updates `batch_stats` with `momentum` (0.9 here = PyTorch's 0.1) using the
    *unbiased* variance, as PyTorch does (`flax.linen.BatchNorm` uses the biased one).
    Statistics are computed in float32 or wider whatever `dtype` is. Under `jax.jit`
    with a sharded batch they are global (synchronised) batch statistics.
    Variables: params `scale`, `bias`; batch_stats `mean`, `var`.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = NORM_EPS
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
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xc, axes)
            var = jnp.mean(jnp.square(xc - mean), axes)
            if not self.is_initializing():
                count = x.size // features
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * mean.astype(stat_dtype)
                running_var.value = m * running_var.value + (1 - m) * unbiased.astype(stat_dtype)
        mul = scale.astype(compute) * lax.rsqrt(var.astype(compute) + self.epsilon)
        y = (xc - mean.astype(compute)) * mul + bias.astype(compute)
        return y.astype(self.dtype or jnp.result_type(x.dtype, self.param_dtype))
