"""LIP over regions (Linen): global, adaptive and RoI importance pooling layers.

Each takes a logit module as `LIP` does (e.g. `ProjectionLogit()`; zero-initialised it
starts as the classical pooling) and applies the matching `lip_jax.regions` op.
"""

from collections.abc import Sequence

import flax.linen as nn

from lip_jax.regions import adaptive_lip_pool, global_lip_pool, roi_lip_pool
from lip_jax.windows import logit_module


class GlobalLIP(nn.Module):
    """`global_lip_pool(x, logit(x))`: `(N, *spatial, C) -> (N, C)`; a classifier head
    in place of global average pooling."""

    logit: nn.Module

    def __call__(self, x):
        return global_lip_pool(x, logit_module(self.logit)(x))


class AdaptiveLIP(nn.Module):
    """`adaptive_lip_pool(x, logit(x), output_size)`: `(N, *spatial, C)` ->
    `(N, *output_size, C)` over PyTorch's adaptive bins."""

    logit: nn.Module
    output_size: int | Sequence[int]

    def __call__(self, x):
        return adaptive_lip_pool(x, logit_module(self.logit)(x), self.output_size)


class RoILIP(nn.Module):
    """`roi_lip_pool(features, logit(features), boxes, ...)`: `(N, H, W, C)` and boxes
    `(K, 5)` -> `(K, *output_size, C)`; see `lip_jax.regions.roi_lip_pool`."""

    logit: nn.Module
    output_size: int | Sequence[int] = (7, 7)
    spatial_scale: float = 1.0
    sampling_ratio: int = 2
    aligned: bool = True

    def __call__(self, features, boxes):
        return roi_lip_pool(features, logit_module(self.logit)(features), boxes,
                            self.output_size, self.spatial_scale, self.sampling_ratio,
                            self.aligned)
