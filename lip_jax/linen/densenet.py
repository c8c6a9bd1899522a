"""DenseNet-BC with pluggable downsampling (Linen); the architecture is
`lip_jax.blocks.densenet`."""

import flax.linen as nn

from lip_jax.blocks.densenet import DenseNetConfig, densenet
from lip_jax.linen.build import Kit


class DenseNet(DenseNetConfig, nn.Module):
    """DenseNet-BC with pluggable downsampling (fields:
    `lip_jax.blocks.densenet.DenseNetConfig`). Submodules are named after the official
    state_dict prefixes without `features.`."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return Kit.of(self, train).run(densenet(self, x.shape[-1]), x)
