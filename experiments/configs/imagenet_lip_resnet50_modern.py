"""LIP-ResNet-50, modern recipe (bf16, cosine + warmup, label smoothing, batch 1024)."""

from lip_jax.train.recipes import imagenet_modern


def get_config():
    return imagenet_modern("lip_resnet50")
