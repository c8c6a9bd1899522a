"""ResNets with pluggable downsampling (NNX); the architecture is `lip_jax.blocks.resnet`."""

from flax import nnx

from lip_jax.blocks.resnet import ResNetConfig, resnet
from lip_jax.nnx.build import Block, Kit


class ResNet(Block):
    """The ResNet of `config` for images of `in_features` channels, with the variable
    tree of `lip_jax.linen.resnet.ResNet`; starts in train mode (`model.eval()`)."""

    def __init__(self, config: ResNetConfig, *, in_features: int = 3, rngs: nnx.Rngs):
        super().__init__(resnet(config, in_features), Kit.of(config, rngs))
