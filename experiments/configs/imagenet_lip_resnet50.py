"""The paper's ImageNet recipe for lip_resnet50; see lip_jax.train.recipes.imagenet_paper."""

from lip_jax.train.recipes import imagenet_paper


def get_config():
    return imagenet_paper("lip_resnet50")
