"""pyproject.toml makes deprecated jax, flax, optax and orbax APIs errors in the tests."""

import jax.numpy as jnp
import optax
import pytest


def test_a_deprecation_warned_inside_a_library_is_an_error():
    with pytest.raises(DeprecationWarning, match="optax.tree.norm"):
        optax.global_norm({"w": jnp.ones(3)})  # warns from optax's own module


def test_a_deprecation_warned_at_its_caller_is_an_error():
    with pytest.raises(DeprecationWarning):
        optax.dpsgd  # noqa: B018  (a deprecated attribute: warns at this module)


def test_other_libraries_deprecations_inside_their_code_stay_warnings():
    with pytest.warns(DeprecationWarning):  # as if tensorflow warned about its own code
        exec("import warnings; warnings.warn('old', DeprecationWarning)",
             {"__name__": "tensorflow.some_module"})
