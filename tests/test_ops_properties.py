"""Property tests of the poolings' special cases, through `lip_jax.testing` (hypothesis):
LIP on every implementation (the zero-logit and large-beta limits, window bounds, shift
invariance, the reference's values and VJP, jit/vmap/chex agreement), LAN (strided
subsampling, uniform weights), average pooling, SoftPool and tempered max pooling."""

import functools

import jax
import jax.numpy as jnp
import pytest

from lip_jax import lip_pool
from lip_jax.testing import (check_average_pool_properties, check_lan_properties,
                             check_lip_properties, check_soft_pool_properties,
                             check_tempered_max_pool_properties, strategies)

# The kernels pool 2-D windows (other ranks take the XLA graph); interpret mode is slow.
TWO_D = strategies.pool_examples(geometries=strategies.window_geometries(spatial_ndim=2))


@pytest.mark.parametrize("implementation, max_examples, examples, skip", [
    ("xla", 6, None, ()),
    ("pallas_gpu", 3, TWO_D, ()),
    ("pallas_mosaic_gpu", 3, TWO_D, ()),
    ("pallas_tpu", 3, TWO_D, ("vmap",)),  # see the next test
])
def test_lip_pool_has_the_lip_properties_on_every_implementation(implementation, max_examples,
                                                                 examples, skip):
    check_lip_properties(functools.partial(lip_pool, implementation=implementation),
                         max_examples=max_examples, examples=examples, skip=skip)


@pytest.mark.xfail(raises=ValueError, strict=True, reason=(
    "Pallas' TPU interpreter (jax 0.10.2) zips the grid, which vmap extends, with the "
    "kernel's dimension_semantics, which it does not; Mosaic's lowering allows for it"))
def test_pallas_tpu_kernel_under_vmap_in_interpret_mode():
    x = jnp.ones((2, 1, 4, 4, 3))
    jax.vmap(lambda x: lip_pool(x, x, (2, 2), implementation="pallas_tpu"))(x)


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
