"""The LIP pooling layer (NNX)."""

from collections.abc import Callable, Sequence

from flax import nnx

from lip_jax.ops import Padding, lip_pool


class LIP(nnx.Module):
    """Local importance pooling, `lip_pool(x, logit(x))`; see `lip_jax.linen.LIP`."""

    def __init__(self, logit: Callable, window_shape: Sequence[int] = (3, 3),
                 strides: Sequence[int] | None = (2, 2),
                 padding: Padding = ((1, 1), (1, 1))):
        self.logit = logit
        self.window_shape = tuple(window_shape)
        self.strides = None if strides is None else tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def __call__(self, x, logit_input=None):
        logits = self.logit(x if logit_input is None else logit_input)
        return lip_pool(x, logits, self.window_shape, self.strides, self.padding)
