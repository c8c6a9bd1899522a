"""Testing tools for poolings: float64 references, hypothesis strategies, property checks.

- `lip_jax.testing.reference`: NumPy float64 references of every pooling, values and
  VJPs (NumPy only).
- `lip_jax.testing.strategies`: hypothesis strategies for window geometries, logits and
  inputs.
- `check_lip_properties(fn)` and its siblings: hypothesis-driven checks that raise
  AssertionError with the failing example.

The strategies and checks need hypothesis and chex: `pip install 'lip-jax[testing]'`.
`import lip_jax` never imports this package.
"""

_CHECKS = ("check_average_pool_properties", "check_lan_properties", "check_lip_properties",
           "check_soft_pool_properties", "check_tempered_max_pool_properties")


def __getattr__(name):
    """The checks import hypothesis and chex only when first used."""
    if name in _CHECKS:
        from lip_jax.testing import checks  # noqa: PLC0415

        return getattr(checks, name)
    raise AttributeError(f"module 'lip_jax.testing' has no attribute {name!r}")


__all__ = list(_CHECKS)
