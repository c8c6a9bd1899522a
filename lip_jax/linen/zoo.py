"""Parts every zoo model shares: its BatchNorm def and its global pooling head."""

import functools

import jax.numpy as jnp

from lip_jax.linen.batch_norm import BatchNorm
from lip_jax.linen.logits import ProjectionLogit
from lip_jax.linen.regions import GlobalLIP


def batch_norm(train: bool, group_size: int = 0, **kinds):
    """The zoo's BatchNorm def (`group_size` > 0: statistics per group of examples)."""
    return functools.partial(BatchNorm, use_running_average=not train, group_size=group_size,
                             **kinds)


def pool_globally(x, kind: str, **kinds):
    """`(N, *spatial, C) -> (N, C)`: the mean ("avg") or a `GlobalLIP` named `global_pool`
    ("lip"), whose zero-initialised projection logits start it as the mean. Call inside a
    compact method."""
    if kind == "avg":
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if kind == "lip":
        return GlobalLIP(ProjectionLogit(**kinds, parent=None), name="global_pool")(x)
    raise ValueError(f'global_pool must be "avg" or "lip", got {kind!r}')
