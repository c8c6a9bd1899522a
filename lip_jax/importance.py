"""What LIP attends to: every LIP layer's importance map for a batch of images."""

import flax.traverse_util
import jax.numpy as jnp

from lip_jax.linen.pooling import IMPORTANCE


def importance_maps(model, variables, images, normalize: str = "image") -> dict:
    """Runs `model` in eval mode and returns `{layer path: (N, H, W) map}` (empty if it
    has no LIP layer).

    Each map lives at the resolution of the tensor its LIP layer pools and is averaged
    over channels. `normalize`:
      - "image": `exp(logit)` divided by its maximum over the image, in (0, 1]: 1 marks
        the most important pixel of the image (per channel, then averaged).
      - "window": each pixel's share of the windows that cover it, in [0, 1]: the weight
        it gets in the weighted means it takes part in (1 = it alone decides them).
    Paths name the layer, e.g. "maxpool", "layer2_0/lip", "layer2_0/downsample/lip".
    """
    if normalize not in ("image", "window"):
        raise ValueError(f'normalize must be "image" or "window", got {normalize!r}')
    _, state = model.apply(variables, images, train=False, mutable=[IMPORTANCE])
    sown = flax.traverse_util.flatten_dict(state.get(IMPORTANCE, {}), sep="/")
    maps = {}
    for key, (value,) in sown.items():
        layer, kind = key.rsplit("/", 1)
        if normalize == "window" and kind == "window_share":
            maps[layer] = value.mean(-1)
        elif normalize == "image" and kind == "logits":
            shifted = value - value.max(axis=(1, 2), keepdims=True)
            maps[layer] = jnp.exp(shifted).mean(-1)
    return maps
