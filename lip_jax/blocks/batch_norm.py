"""BatchNorm's math, shared by `lip_jax.linen.BatchNorm` and `lip_jax.nnx.BatchNorm`:
PyTorch's running statistics (unbiased variance) over the whole batch or over groups of
consecutive examples."""

import jax.numpy as jnp
from jax import lax


def batch_norm(x, scale, bias, mean, var, *, train: bool, group_size: int = 0,
               momentum: float = 0.9, epsilon: float, dtype=None, where: str = "BatchNorm"):
    """Normalises `x` `(N, ..., C)` over all axes but the last; returns `(y, (mean, var))`.

    Eval (`train=False`): with the running `mean` and `var` `(C,)`, returned unchanged.
    Train: with the batch's mean and biased variance, per group of `group_size`
    consecutive examples (0: the whole batch; N must be divisible by it), and returns the
    running statistics moved by `momentum` (0.9 = PyTorch's 0.1) towards the average over
    groups of each group's mean and *unbiased* variance. Statistics are computed in
    float32 or wider; `y` has `dtype`, or the promotion of `x` and `scale`. `where` names
    the layer in errors: inputs that are not `(N, ..., C)` with the layer's C, a
    `momentum` outside [0, 1], a bad `group_size`, and in train mode a group holding one
    value per channel (its unbiased variance is undefined; PyTorch refuses it too).
    """
    _check(x, scale.shape[-1], momentum, where)
    stat_dtype = mean.dtype
    compute = jnp.promote_types(jnp.promote_types(x.dtype, stat_dtype), jnp.float32)
    xc = x.astype(compute)
    running = (mean, var)
    if train:
        xc = _grouped(xc, group_size, where)  # (num_groups, G, ..., C)
        axes = tuple(range(1, xc.ndim - 1))
        mean = jnp.mean(xc, axes, keepdims=True)
        var = jnp.mean(jnp.square(xc - mean), axes, keepdims=True)
        count = xc[0].size // xc.shape[-1]  # per group
        if count < 2:
            raise ValueError(f"{where}: inputs of shape {x.shape} in train mode give "
                             f"{count} value per channel per group of {xc.shape[1]} "
                             "examples; the batch statistics need at least 2")
        unbiased = var * (count / (count - 1))
        over_groups = (0, *axes)
        running = (momentum * running[0] + (1 - momentum) * jnp.mean(
                       mean, over_groups).astype(stat_dtype),
                   momentum * running[1] + (1 - momentum) * jnp.mean(
                       unbiased, over_groups).astype(stat_dtype))
    mul = scale.astype(compute) * lax.rsqrt(var.astype(compute) + epsilon)
    y = (xc - mean.astype(compute)) * mul + bias.astype(compute)
    return y.reshape(x.shape).astype(dtype or jnp.result_type(x.dtype, scale.dtype)), running


def _check(x, features, momentum, where):
    if x.ndim < 2 or x.shape[-1] != features:
        raise ValueError(f"{where}: inputs of shape {x.shape}: expected (N, ..., {features})")
    if not 0 <= momentum <= 1:
        raise ValueError(f"{where}: momentum must be in [0, 1] (0.9 = PyTorch's 0.1), got "
                         f"{momentum!r}")


def _grouped(x, group_size, where):
    """`(N, ..., C) -> (N / G, G, ..., C)`; G = N when `group_size` is 0."""
    n = x.shape[0]
    if not n:
        raise ValueError(f"{where}: an empty batch (inputs of shape {x.shape}) has no "
                         "statistics for train mode")
    group = group_size or n
    if group_size < 0 or n % group:
        raise ValueError(f"{where}: group_size {group_size} must be >= 0 and divide the "
                         f"batch of {n} examples")
    return x.reshape(n // group, group, *x.shape[1:])
