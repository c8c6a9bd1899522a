"""DenseNet-BC with pluggable downsampling (NNX); the architecture is
`lip_jax.blocks.densenet`."""

from flax import nnx

from lip_jax.blocks.densenet import DenseNetConfig, densenet
from lip_jax.nnx.build import Block, Kit


class DenseNet(Block):
    """The DenseNet of `config` for images of `in_features` channels, with the variable
    tree of `lip_jax.linen.densenet.DenseNet`; starts in train mode (`model.eval()`)."""

    def __init__(self, config: DenseNetConfig, *, in_features: int = 3, rngs: nnx.Rngs):
        super().__init__(densenet(config, in_features), Kit.of(config, rngs))
