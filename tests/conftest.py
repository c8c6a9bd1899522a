"""8 fake CPU devices for sharding tests; set before jax is imported."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)

# Threefry key derivation makes XLA:CPU compile model inits 2-3x slower; nothing in the
# tests depends on the PRNG algorithm.
jax.config.update("jax_default_prng_impl", "rbg")
