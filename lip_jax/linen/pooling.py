"""Local pooling layers (Linen): LIP and DPP."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from lip_jax.dpp import dpp_pool
from lip_jax.ops import Padding, lip_pool, window_share
from lip_jax.windows import logit_module

IMPORTANCE = "importance"
"""Collection where LIP layers sow `logits` and `window_share` when it is mutable."""


class LIP(nn.Module):
    """Local importance pooling, `lip_pool(x, logit(x))`.

    `logit` is any module mapping `(N, *spatial, C)` to logits broadcastable to it (per
    channel, shared or grouped), e.g. `ProjectionLogit()`. The defaults are the official
    k3/s2/p1: `(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C)`. `logit_input`, when given,
    feeds the logit module instead of `x` (LIP-ResNet computes logits from a shared trunk).
    A logit module's `logit_bounds` attribute, where it has one (every module of
    `lip_jax.linen.logits` has `(0, 12)`), is passed to `lip_pool` as its promise.
    Inside another module's compact method, build the logit module with `parent=None` so
    that it becomes this layer's child `logit`.

    `implementation` is `lip_pool`'s (None: the backend's default), e.g. "xla" for
    forward-mode differentiation on a GPU.

    With `mutable=["importance"]` in `apply`, the layer sows its `logits` and each pixel's
    `window_share` (see `lip_jax.ops.window_share`); otherwise it computes neither.
    """

    logit: nn.Module
    window_shape: Sequence[int] = (3, 3)
    strides: Sequence[int] | None = (2, 2)
    padding: Padding = ((1, 1), (1, 1))
    implementation: str | None = None

    def __call__(self, x, logit_input=None):
        logits = logit_module(self.logit)(x if logit_input is None else logit_input)
        if self.is_mutable_collection(IMPORTANCE) and not self.is_initializing():
            logits = jax.numpy.broadcast_to(logits, x.shape[:-1] + logits.shape[-1:])
            self.sow(IMPORTANCE, "logits", logits)
            self.sow(IMPORTANCE, "window_share", window_share(
                logits, self.window_shape, self.strides, self.padding))
        return lip_pool(x, logits, self.window_shape, self.strides, self.padding,
                        self.implementation,
                        logit_bounds=getattr(self.logit, "logit_bounds", None))


class DPP(nn.Module):
    """Detail-preserving pooling (Lite-DPP, `lip_jax.dpp.dpp_pool`) with learned per-channel
    `alpha = exp(log_alpha)` and `lambda = exp(log_lambda)` (positive; both 1 at init).

    `asymmetric` picks rho_asym. Defaults k3/s2/p1: `(N, H, W, C) -> (N, ceil(H/2),
    ceil(W/2), C)`. Params `log_alpha`, `log_lambda`, each `(C,)`.
    """

    window_shape: Sequence[int] = (3, 3)
    strides: Sequence[int] | None = (2, 2)
    padding: Padding = ((1, 1), (1, 1))
    asymmetric: bool = False
    param_dtype: jax.typing.DTypeLike = jax.numpy.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1],)
        log_alpha = self.param("log_alpha", nn.initializers.zeros, shape, self.param_dtype)
        log_lambda = self.param("log_lambda", nn.initializers.zeros, shape, self.param_dtype)
        return dpp_pool(x, jax.numpy.exp(log_alpha), jax.numpy.exp(log_lambda),
                        self.window_shape, self.strides, self.padding, self.asymmetric)
