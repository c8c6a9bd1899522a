"""Feature pyramid network (Lin et al. 2017) over a `features_only` backbone."""

import flax.linen as nn
import jax.numpy as jnp


def _upsample2(x, shape):
    """Nearest-neighbour 2x upsampling of `(N, H, W, C)`, cropped to `shape[1:3]`."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :shape[1], :shape[2]]


class FPN(nn.Module):
    """`{"C2": .., "C5": ..}` (strides 4..32) -> `{"P2": .., "P5": ..}`, `features`
    channels each: 1x1 lateral convs, top-down nearest 2x upsampling and sums, 3x3 output
    convs (LeCun-normal: variance 1 / fan_in, as Detectron2's c2_xavier_fill)."""

    features: int = 64

    @nn.compact
    def __call__(self, c: dict) -> dict:
        levels = sorted(c, reverse=True)  # C5 first
        p, pyramid = None, {}
        for level in levels:
            lateral = nn.Conv(self.features, (1, 1), name=f"lateral_{level}")(c[level])
            p = lateral if p is None else lateral + _upsample2(p, lateral.shape)
            pyramid["P" + level[1:]] = p
        return {k: nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name=f"out_{k}")(v)
                for k, v in sorted(pyramid.items())}
