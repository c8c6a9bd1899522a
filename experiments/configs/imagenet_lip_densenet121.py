"""The paper's ImageNet recipe for lip_densenet121; see lip_jax.train.recipes.imagenet_paper."""

from lip_jax.train.recipes import imagenet_paper


def get_config():
    return imagenet_paper("lip_densenet121")
