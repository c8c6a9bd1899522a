"""A small CNN for 28x28 inputs with pluggable downsampling (NNX); the architecture is
`lip_jax.blocks.small_cnn`."""

from flax import nnx

from lip_jax.blocks.small_cnn import SmallCNNConfig, small_cnn
from lip_jax.nnx.build import Block, Kit


class SmallCNN(Block):
    """The small CNN of `config` for images of `in_features` channels, with the variable
    tree of `lip_jax.linen.small_cnn.SmallCNN`; starts in train mode (`model.eval()`)."""

    def __init__(self, config: SmallCNNConfig, *, in_features: int = 1, rngs: nnx.Rngs):
        super().__init__(small_cnn(config, in_features), Kit.of(config, rngs))
