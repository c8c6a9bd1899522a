"""Feature pyramid network (Lin et al. 2017) over a `features_only` backbone."""

from collections.abc import Mapping
import re

import flax.linen as nn
import jax.numpy as jnp

from lip_jax.windows import positive_int


def _upsample2(x, shape):
    """Nearest-neighbour 2x upsampling of `(N, H, W, C)`, cropped to `shape[1:3]`."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :shape[1], :shape[2]]


def stage_level(key) -> int:
    """The level `l` of a backbone stage key `"C<l>"` (stride `2**l`); a ValueError
    otherwise."""
    found = re.fullmatch(r"C(\d+)", key) if isinstance(key, str) else None
    if found is None:
        raise ValueError(f"stage key {key!r}: expected 'C<level>' such as 'C2' (stride "
                         "2**level)")
    return int(found.group(1))


def _check_coarser(c: dict, finer: str, coarser: str) -> None:
    """A ValueError naming `coarser` unless it is the level after `finer`, with the same
    batch and channels-last spatial size half of `finer`'s, rounded up."""
    shape, fine_shape = c[coarser].shape, c[finer].shape
    half = tuple(-(-size // 2) for size in fine_shape[1:3])
    if stage_level(coarser) != stage_level(finer) + 1:
        raise ValueError(f"stages {finer} and {coarser}: expected consecutive levels")
    if shape[0] != fine_shape[0] or shape[1:3] != half:
        raise ValueError(f"{coarser} of shape {shape}: expected (N, H, W, C) = ({fine_shape[0]}"
                         f", {half[0]}, {half[1]}, C), the batch of {finer} {fine_shape} and "
                         "half its spatial size (rounded up)")


def _stages(c) -> list[str]:
    """The keys of the backbone stages `c`, finest first, each checked against the
    previous (`_check_coarser`)."""
    if not isinstance(c, Mapping):
        raise TypeError(f"c must be a dict of backbone stages {{'C2': (N, H, W, C), ...}}, "
                        f"got {type(c).__name__}")
    if not c:
        raise ValueError("c is empty: expected one or more backbone stages 'C2', ...")
    keys = sorted(c, key=stage_level)
    for key in keys:
        if len(c[key].shape) != 4:
            raise ValueError(f"{key} of shape {c[key].shape}: expected (N, H, W, C)")
    for finer, coarser in zip(keys, keys[1:]):
        _check_coarser(c, finer, coarser)
    return keys


class FPN(nn.Module):
    """`{"C2": .., "C5": ..}` (stage l has stride 2**l; levels consecutive, each half the
    previous's size rounded up) -> `{"P2": .., "P5": ..}`, finest first, `features`
    channels each: 1x1 lateral convs, top-down nearest 2x upsampling and sums, 3x3 output
    convs (LeCun-normal: variance 1 / fan_in, as Detectron2's c2_xavier_fill)."""

    features: int = 64

    @nn.compact
    def __call__(self, c: dict) -> dict:
        positive_int("features", self.features)
        p, pyramid = None, {}
        for key in reversed(_stages(c)):  # coarsest first
            lateral = nn.Conv(self.features, (1, 1), name=f"lateral_{key}")(c[key])
            p = lateral if p is None else lateral + _upsample2(p, lateral.shape)
            pyramid[f"P{stage_level(key)}"] = p
        return {k: nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name=f"out_{k}")(v)
                for k, v in reversed(pyramid.items())}
