"""Slow, obviously correct NumPy float64 references for every pooling of `lip_jax`.

Each op has the name, arguments and defaults of its `lip_jax` counterpart and returns
float64 (the same geometry rules: "VALID", "SAME" or `(low, high)` padding, PyTorch's
`ceil_mode` rule, padding weighted 0 unless counted; the same ValueError for a window of
padding only). Windows are enumerated one by one and every weighted mean is taken over
the window's own pixels with the window's own maximum logit subtracted, so values are
exact at any logit magnitude. `vjp(op, cotangent, *args, **kwargs)` is the op's
vector-Jacobian product, in closed form (no finite differences), one gradient per
differentiable argument (each op's docstring names them):

    y = reference.lip_pool(x, logits, (3, 3), (2, 2), ((1, 1), (1, 1)))
    dx, dlogits = reference.vjp(reference.lip_pool, g, x, logits, (3, 3), (2, 2),
                                ((1, 1), (1, 1)))

`max_pool` (the large-beta limit, no VJP) and `roi_align` (torchvision's RoIAlign,
channels-last) are references for the limits. NumPy only: nothing here needs hypothesis.
"""

from lip_jax.testing.reference.core import value_and_pullback, vjp
from lip_jax.testing.reference.filters import PADDING_MODES, average_pool, blur_pool, dpp_pool
from lip_jax.testing.reference.geometry import Taps, Windows, explicit_padding, output_size, windows
from lip_jax.testing.reference.regions import (adaptive_lip_pool, global_lip_pool, roi_align,
                                               roi_lip_pool, sampling_matrix)
from lip_jax.testing.reference.windowed import (lan_pool, lip_pool, max_pool, soft_pool,
                                                tempered_max_pool, window_share)

__all__ = ["PADDING_MODES", "Taps", "Windows", "adaptive_lip_pool", "average_pool",
           "blur_pool", "dpp_pool", "explicit_padding", "global_lip_pool", "lan_pool",
           "lip_pool", "max_pool", "output_size", "roi_align", "roi_lip_pool",
           "sampling_matrix", "soft_pool", "tempered_max_pool", "value_and_pullback", "vjp",
           "window_share", "windows"]
