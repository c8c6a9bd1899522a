"""BlurPool (Zhang, ICML 2019): a fixed binomial low-pass filter, then subsampling.

As a LAN instance the weight of a pixel is the binomial coefficient of its place in the
window, `w[p, q] = b[q - origin(p)]` (window 3: [1, 2, 1] x [1, 2, 1]; window 2:
[1, 1] x [1, 1]), padding has weight 0 and each window is normalised by its weight sum.
"""

import math

import jax.numpy as jnp
import numpy as np

from lip_jax.windows import Padding
from lip_jax.patches import patch_mean, window_patches


def binomial_filter(window_shape) -> np.ndarray:
    """Outer product of binomial rows, flattened row-major: `(prod(window_shape), 1)`."""
    rows = [np.array([math.comb(k - 1, i) for i in range(k)], np.float64) for k in window_shape]
    out = rows[0]
    for row in rows[1:]:
        out = np.multiply.outer(out, row)
    return out.reshape(-1, 1)


def blur_pool(inputs, window_shape, strides=None, padding: Padding = "VALID", *,
              padding_mode: str = "exclude", ceil_mode: bool = False):
    """Binomial-weighted mean of each window, `(*batch, *spatial, C)` -> pooled, same dtype.

    `padding_mode`: "exclude" (the default, LAN's rule as in every pooling here: padded
    pixels weigh 0 and each window's in-image weights are renormalised), or "zeros",
    "reflect", "replicate": the padding is filled as PyTorch's padding modes do and
    weighted like any pixel, as antialiased-cnns' BlurPool does (its default is
    "reflect", with padding `((k - 1) // 2, k // 2)` per dim). Interiors agree in every
    mode. `ceil_mode` as in `lip_jax.lan_pool`. Differentiated by autodiff (exact).
    """
    patches, mask = window_patches(inputs, window_shape, strides, padding, ceil_mode,
                                   padding_mode)
    weights = mask * jnp.asarray(binomial_filter(window_shape), patches.dtype)
    return patch_mean(patches, weights).astype(jnp.asarray(inputs).dtype)
