"""Layer declarations shared by the Linen and NNX zoo models.

A model family declares its layers once, as values of the types below, and writes its
forward pass once, as a function `forward(layers, *inputs)` of the built layers
(`layers.conv1`, ...). A front-end's `Kit` (`lip_jax.linen.build`, `lip_jax.nnx.build`)
turns each declaration into a module of that front-end under the declared name, so the
two front-ends share layer order, initialisers and variable names. Declarations carry the
input channels that NNX needs; Linen ignores them.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lip_jax.defaults import conv_init
from lip_jax.linen.downsample import Pooling
from lip_jax.ops import Padding


@dataclasses.dataclass(frozen=True)
class Conv:
    """Bias-free `kernel_size` x `kernel_size` convolution, padded by `padding` on every side."""

    in_features: int
    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    kernel_init: Callable = conv_init


@dataclasses.dataclass(frozen=True)
class Norm:
    """The zoo's BatchNorm over `features` channels; `zero_scale` starts its scale at 0."""

    features: int
    zero_scale: bool = False


@dataclasses.dataclass(frozen=True)
class Dense:
    """Linear layer with a zero-initialised bias."""

    in_features: int
    features: int
    kernel_init: Callable = jax.nn.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class Logit:
    """The logit module `module` ("LogitHead", "BottleneckTrunk" or "BottleneckLogit",
    same names and keyword arguments in `lip_jax.linen` and `lip_jax.nnx`) reading
    `in_features` channels, built with `options`; `remat` recomputes it in the backward
    pass. Build with `logit(...)`."""

    module: str
    in_features: int
    options: tuple[tuple[str, Any], ...] = ()
    remat: bool = False


def logit(module: str, in_features: int, *, remat: bool = False, **options) -> Logit:
    return Logit(module, in_features, tuple(sorted(options.items())), remat)


@dataclasses.dataclass(frozen=True)
class Pool:
    """`pooling` at one place, pooling `in_features` channels; `logit` is the place's LIP
    logit module, built only for poolings that use one."""

    pooling: Pooling
    window_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Padding
    in_features: int
    logit: Logit


@dataclasses.dataclass(frozen=True)
class GlobalLIP:
    """`GlobalLIP` head with logit module `logit`: `(N, *spatial, C) -> (N, C)`."""

    logit: Logit


@dataclasses.dataclass(frozen=True)
class Block:
    """A layer made of named children, run as `forward(layers, *inputs)`. Children that
    are declarations are built; others (functions, None, tuples of names) are given to
    `forward` as they are. Build with `block(...)`."""

    forward: Callable
    children: tuple[tuple[str, Any], ...]


def block(forward: Callable, **children) -> Block:
    return Block(forward, tuple(children.items()))


def images(m, x):
    """`x`, a batch of images `(N, H, W, m.in_features)`; a ValueError naming its shape
    otherwise (a single image or channels-first would otherwise run, misread)."""
    if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != m.in_features:
        raise ValueError(f"images of shape {jnp.shape(x)}: expected (N, H, W, "
                         f"{m.in_features}), a batch of channels-last images")
    return x


def global_average(x):
    """`(N, *spatial, C) -> (N, C)`: the mean over positions."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def global_pool(kind: str, in_features: int):
    """The head before the classifier: the mean ("avg") or a `GlobalLIP` ("lip") whose
    zero-initialised projection logits start it as the mean."""
    if kind == "avg":
        return global_average
    if kind == "lip":
        return GlobalLIP(logit("LogitHead", in_features))
    raise ValueError(f'global_pool must be "avg" or "lip", got {kind!r}')
