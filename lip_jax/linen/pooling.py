"""The LIP pooling layer (Linen)."""

from collections.abc import Sequence

import flax.linen as nn

from lip_jax.ops import Padding, lip_pool


class LIP(nn.Module):
    """Local importance pooling, `lip_pool(x, logit(x))`.

    `logit` is any module mapping `(N, *spatial, C)` to logits broadcastable to it (per
    channel, shared or grouped), e.g. `ProjectionLogit()`. The defaults are the official
    k3/s2/p1: `(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C)`.
    """

    logit: nn.Module
    window_shape: Sequence[int] = (3, 3)
    strides: Sequence[int] | None = (2, 2)
    padding: Padding = ((1, 1), (1, 1))

    def __call__(self, x):
        return lip_pool(x, self.logit(x), self.window_shape, self.strides, self.padding)
