"""The zoo's downsampling choices: each a factory that builds the pooling layer of a place.

A zoo model (`ResNet`, `DenseNet`, `SmallCNN`) takes `pool: Pooling | None` and calls it
at the places LIP-ResNet / LIP-DenseNet put LIP (stem, stride-2 blocks and their
shortcuts, DenseNet transitions), each time with that place's geometry and the official
LIP logit module for it; `pool=None` keeps the baseline's own downsampling. A new
pooling is a new `Pooling`, not a new model. In LAN terms (`out = sum w x / sum w`):

    lip       w = exp(logit module(x))          the official LIP layers
    avg       w = 1                             average pooling (padding excluded)
    max       w = exp(beta x), beta -> inf      max pooling
    soft      w = exp(x)                        SoftPool
    blur      w = binomial filter of the place  BlurPool (fixed low-pass, subsample)
    dpp       w = alpha + rho_lambda(x - mean)  detail-preserving pooling (symmetric)
    dpp_asym  same with rho_asym                detail-preserving pooling (asymmetric)
"""

from collections.abc import Callable
import dataclasses
import functools

import flax.linen as nn

from lip_jax.blur import blur_pool
from lip_jax.linen.pooling import DPP, LIP
from lip_jax.ops import average_pool, soft_pool


@dataclasses.dataclass(frozen=True)
class Pooling:
    """A downsampling choice: `pooling(window_shape, strides, padding, logit=m, name=n)`
    returns a Linen layer `(x) -> pooled x` (`(x, logit_input)` when `uses_logit`), and
    `pooling.nnx(window_shape, strides, padding, logit=m, num_features=c, rngs=r)` the
    same layer in NNX (same variables), for `c` input channels.

    `make(window_shape, strides, padding, logit, name)` builds the Linen layer and
    `make_nnx(window_shape, strides, padding, logit, num_features, rngs)` the NNX one
    (None: the pooling has no NNX layer); `uses_logit`: the layer takes the model's LIP
    logit module `logit` (a Linen one built with `parent=None`, or an NNX one) and may
    read a `logit_input` other than `x` (LIP-ResNet's shared trunk). Layers without
    variables may be plain functions.
    """

    name: str
    make: Callable
    uses_logit: bool = False
    make_nnx: Callable | None = None

    def __call__(self, window_shape, strides, padding, *, logit=None, name=None):
        return self.make(window_shape, strides, padding, logit, name)

    def nnx(self, window_shape, strides, padding, *, logit=None, num_features, rngs):
        if self.make_nnx is None:
            raise ValueError(f"pool {self.name!r} has no NNX layer: its Pooling has no "
                             "make_nnx")
        return self.make_nnx(window_shape, strides, padding, logit, num_features, rngs)


def _fixed(op):
    """A pooling without variables: the same function in Linen and NNX."""
    return lambda window_shape, strides, padding, *_: functools.partial(
        op, window_shape=tuple(window_shape), strides=tuple(strides), padding=padding)


def _dpp(asymmetric):
    return lambda window_shape, strides, padding, logit, name: DPP(
        window_shape, strides, padding, asymmetric, name=name)


def _nnx_lip(window_shape, strides, padding, logit, num_features, rngs):
    # Imported here: lip_jax.nnx imports the model zoo, which imports this module.
    from lip_jax.nnx.pooling import LIP
    return LIP(logit, window_shape, strides, padding)


def _nnx_dpp(asymmetric):
    def make(window_shape, strides, padding, logit, num_features, rngs):
        from lip_jax.nnx.pooling import DPP as NNXDPP  # imported here, as in _nnx_lip
        return NNXDPP(num_features, window_shape, strides, padding, asymmetric)
    return make


POOLINGS = {p.name: p for p in (
    Pooling("lip", lambda w, s, p, logit, name: LIP(logit, w, s, p, name=name), True, _nnx_lip),
    *(Pooling(name, _fixed(op), False, _fixed(op)) for name, op in (
        ("avg", average_pool), ("max", nn.max_pool), ("soft", soft_pool), ("blur", blur_pool))),
    Pooling("dpp", _dpp(False), False, _nnx_dpp(False)),
    Pooling("dpp_asym", _dpp(True), False, _nnx_dpp(True)),
)}
"""The registered poolings by name; "strided" (the baseline's layers) is `pool=None`."""

POOL_CHOICES = ("strided", *POOLINGS)


def pooling(name: "str | Pooling | None") -> Pooling | None:
    """The `Pooling` called `name` (a `Pooling` is returned as is); None for "strided"
    (the baseline's own layers)."""
    if name is None or isinstance(name, Pooling):
        return name
    if name == "strided":
        return None
    if name not in POOLINGS:
        raise ValueError(f"unknown pool {name!r}; choose one of {', '.join(POOL_CHOICES)}")
    return POOLINGS[name]


def apply_pool(layer, x, logit_input=None):
    """Calls a pooling layer, passing `logit_input` only to layers that read one."""
    return layer(x) if logit_input is None else layer(x, logit_input)
