"""Constants and initialisers of the official release, and the logit modules' size rules,
shared by Linen and NNX layers."""

import jax

from lip_jax.windows import positive_int

GATE_COEFF = 12.0
"""SoftGate amplitude: logits lie in (0, 12)."""

LOGIT_BOUNDS = (0.0, GATE_COEFF)
"""The range of `soft_gate(z, GATE_COEFF)`, so of every logit module's output."""

LOGIT_WIDTH = 128
"""Width of the Bottleneck-128 logit trunk."""

NORM_EPS = 1e-5
"""InstanceNorm and BatchNorm epsilon (PyTorch's; Flax defaults to 1e-6)."""

conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""PyTorch `kaiming_normal_(mode='fan_out', nonlinearity='relu')`, untruncated."""

zeros_init = jax.nn.initializers.zeros
"""Final logit convs start at zero: constant logits, so LIP starts as average pooling."""


def logit_conv_padding(kernel_size, spatial_ndim: int) -> list[tuple[int, int]]:
    """The padding that keeps a logit module's spatial size: `kernel_size // 2` on every
    side; a ValueError unless `kernel_size` is a positive odd int."""
    k = positive_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (logits keep the input's size), got {k}")
    return [(k // 2, k // 2)] * spatial_ndim


def logit_features(features, in_features: int) -> int:
    """A logit module's output channels: `features`, or the input's where None."""
    return in_features if features is None else positive_int("features", features)
