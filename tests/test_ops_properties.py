"""Property tests of the poolings' special cases, through `lip_jax.testing` (hypothesis):
LIP on every implementation (the zero-logit and large-beta limits, window bounds, shift
invariance, the reference's values and VJP, jit/vmap/chex agreement), LAN (strided
subsampling, uniform weights), average pooling, SoftPool and tempered max pooling."""

import functools

import jax
import pytest

from lip_jax import lip_pool
from lip_jax.testing import (check_average_pool_properties, check_lan_properties,
                             check_lip_properties, check_soft_pool_properties,
                             check_tempered_max_pool_properties, strategies)

# The kernels pool 2-D windows (other ranks take the XLA graph); interpret mode is slow.
TWO_D = strategies.pool_examples(geometries=strategies.window_geometries(spatial_ndim=2))


@pytest.mark.parametrize("implementation, max_examples, examples", [
    ("xla", 6, None),
    ("pallas_gpu", 3, TWO_D),
    ("pallas_mosaic_gpu", 3, TWO_D),
    ("pallas_tpu", 3, TWO_D),
])
def test_lip_pool_has_the_lip_properties_on_every_implementation(implementation, max_examples,
                                                                 examples):
    check_lip_properties(functools.partial(lip_pool, implementation=implementation),
                         max_examples=max_examples, examples=examples)


def test_lip_pool_matches_the_reference_to_float64_precision():
    """Logits with spreads up to 1e6 and offsets up to 1e12 in float64: values and both
    gradients agree with the reference to 1e-9."""
    with jax.enable_x64(True):
        check_lip_properties(max_examples=3, seed=1, examples=strategies.pool_examples(
            dtypes=("float64",), integer=False))


def test_lan_pool_has_the_lan_properties():
    check_lan_properties()


def test_average_pool_has_the_average_pool_properties():
    check_average_pool_properties()


def test_soft_pool_has_the_soft_pool_properties():
    check_soft_pool_properties()


def test_tempered_max_pool_rises_to_max_pooling():
    check_tempered_max_pool_properties()
