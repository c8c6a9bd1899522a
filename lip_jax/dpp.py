"""Detail-preserving pooling (DPP; Saeedan, Weber, Goesele, Roth, CVPR 2018) as LAN.

The paper's pooling (its Eqs. 4-7), for output position p with window Omega_p:

    DPP(I)[p] = sum_{q in Omega_p} w[p, q] I[q]  /  sum_{q' in Omega_p} w[p, q']
    w[p, q]   = alpha + rho_lambda(I[q] - I~[p])
    rho_sym(d)  = (sqrt(d^2 + eps^2))^lambda
    rho_asym(d) = (sqrt(max(0, d)^2 + eps^2))^lambda,    eps = 1e-3

with I~ the linearly downscaled input; here (the paper's Lite-DPP) I~[p] is the plain
mean of window p, so a pixel's weight grows with its deviation from that locally
smoothed copy: the symmetric variant rewards both directions, the asymmetric one only
pixels above the mean. alpha >= 0 and lambda >= 0 are learned per channel; alpha -> inf
gives average pooling, lambda = 0 too. Padding is excluded from both the mean and the
weights (weight 0).
"""

import jax.numpy as jnp

from lip_jax.windows import Padding, flag, float_array
from lip_jax.patches import patch_mean, window_patches

DPP_EPS = 1e-3
"""The paper's epsilon in rho."""


def dpp_weights(deviation, alpha, lam, asymmetric: bool = False, eps: float = DPP_EPS):
    """`alpha + rho_lambda(deviation)`, elementwise; alpha, lam broadcast per channel."""
    d = jnp.maximum(deviation, 0) if asymmetric else deviation
    return alpha + (d * d + eps * eps) ** (lam / 2)


def dpp_pool(inputs, alpha, lam, window_shape, strides=None, padding: Padding = "VALID",
             asymmetric: bool = False, eps: float = DPP_EPS, *, ceil_mode: bool = False):
    """Detail-preserving pooling (Lite-DPP), `(*batch, *spatial, C)` -> pooled, same dtype.

    Args:
      inputs: `(*batch, *spatial, C)` floats.
      alpha, lam: non-negative, `(C,)` or scalars (the paper's per-channel alpha, lambda).
      window_shape, strides, padding: as in `lip_jax.lan_pool`.
      asymmetric: rho_asym (only pixels above their window mean gain weight) instead of
        rho_sym.
      ceil_mode: as in `lip_jax.lan_pool`.
    Sums run in float32 (float64 for float64 inputs); autodiff gives exact gradients for
    inputs, alpha and lambda.
    """
    patches, mask = window_patches(inputs, window_shape, strides, padding, ceil_mode)
    ct = patches.dtype
    alpha, lam, eps = (float_array(name, value, ints_as=ct) for name, value
                       in (("alpha", alpha), ("lam", lam), ("eps", eps)))
    for name, value in (("alpha", alpha), ("lam", lam)):
        if value.ndim > 1 or value.size not in (1, patches.shape[-1]):
            raise ValueError(f"{name} must be a scalar or one value per channel "
                             f"({patches.shape[-1]}), got shape {value.shape}")
    smooth = patch_mean(patches, mask)[..., None, :]
    w = mask * dpp_weights(patches - smooth, alpha.astype(ct), lam.astype(ct),
                           flag("asymmetric", asymmetric), eps)
    return patch_mean(patches, w).astype(jnp.asarray(inputs).dtype)
