"""A small CNN for 28x28 inputs (Fashion-MNIST) with pluggable downsampling (Linen); the
architecture is `lip_jax.blocks.small_cnn`."""

import flax.linen as nn

from lip_jax.blocks.small_cnn import SmallCNNConfig, small_cnn
from lip_jax.linen.build import Kit


class SmallCNN(SmallCNNConfig, nn.Module):
    """The small CNN (fields: `lip_jax.blocks.small_cnn.SmallCNNConfig`)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return Kit.of(self, train).run(small_cnn(self, x.shape[-1]), x)
