"""LIP over regions (NNX): global, adaptive and RoI importance pooling layers; see
`lip_jax.linen.regions` (same variable trees)."""

from collections.abc import Callable, Sequence

from flax import nnx

from lip_jax.nnx.pooling import frozen
from lip_jax.regions import adaptive_lip_pool, global_lip_pool, roi_lip_pool
from lip_jax.windows import logit_module


class GlobalLIP(nnx.Module):
    """`global_lip_pool(x, logit(x))`: `(N, *spatial, C) -> (N, C)`."""

    def __init__(self, logit: Callable):
        self.logit = logit_module(logit)

    def __call__(self, x):
        return global_lip_pool(x, self.logit(x))


class AdaptiveLIP(nnx.Module):
    """`adaptive_lip_pool(x, logit(x), output_size)`."""

    def __init__(self, logit: Callable, output_size: int | Sequence[int]):
        self.logit = logit_module(logit)
        self.output_size = frozen(output_size)

    def __call__(self, x):
        return adaptive_lip_pool(x, self.logit(x), self.output_size)


class RoILIP(nnx.Module):
    """`roi_lip_pool(features, logit(features), boxes, ...)`: `(K, *output_size, C)`."""

    def __init__(self, logit: Callable, output_size: int | Sequence[int] = (7, 7),
                 spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True):
        self.logit = logit_module(logit)
        self.output_size = frozen(output_size)
        self.spatial_scale, self.sampling_ratio, self.aligned = (spatial_scale, sampling_ratio,
                                                                 aligned)

    def __call__(self, features, boxes):
        return roi_lip_pool(features, self.logit(features), boxes, self.output_size,
                            self.spatial_scale, self.sampling_ratio, self.aligned)
