"""Constants and initialisers of the official release, shared by Linen and NNX layers."""

import jax

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

