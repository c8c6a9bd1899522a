"""ResNets with pluggable downsampling (Linen); the architecture is `lip_jax.blocks.resnet`."""

import flax.linen as nn

from lip_jax.blocks.resnet import ResNetConfig, resnet
from lip_jax.linen.build import Kit


class ResNet(ResNetConfig, nn.Module):
    """ResNet with pluggable downsampling (fields: `lip_jax.blocks.resnet.ResNetConfig`).

    `init(rng, images, train=False)` -> `{"params", "batch_stats"}`; submodules are named
    after the official state_dict prefixes (`layer2_0` for `layer2.0`).
    """

    @nn.compact
    def __call__(self, x, train: bool = False):
        return Kit.of(self, train).run(resnet(self, x.shape[-1]), x)
