"""`lip_pool(..., logit_bounds=(low, high))`: the promise of bounded logits takes the XLA
graph's fast form for every image (no per-image statistics, no `lax.cond`), with the LIP
properties, the unbounded path's values and derivatives, forward mode, no communication on
a sharded batch; a broken promise poisons only its image; the LIP layers (and so the zoo)
pass their logit modules' (0, 12); bad bounds named."""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lip_jax import linen as L, models, nnx as N, ops
from lip_jax.testing import check_lip_properties, strategies

P1 = ((1, 1), (1, 1))
BOUNDS = (0.0, 12.0)


def _soft_gated(shape, seed=1, dtype=jnp.float32):
    return ops.soft_gate(jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def _primitives(jaxpr) -> set[str]:
    found = set()
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _primitives(sub)
    return found


def test_bounded_lip_pool_has_the_lip_properties():
    """Logits within (-25, 25) (spreads up to 4): the reference's values and VJPs,
    window bounds, zero logits, vmap and jit variants. (The shift and large-beta
    properties move logits outside any fixed bounds.)"""
    examples = strategies.pool_examples(spreads=(0.0, 1.0, 4.0), offsets=(0.0,),
                                        integer=False)
    check_lip_properties(functools.partial(ops.lip_pool, logit_bounds=(-25, 25)),
                         max_examples=8, examples=examples, skip=("shift", "large_beta"))


@pytest.mark.parametrize("dtype, shape, logit_shape, padding", [
    (jnp.float32, (3, 9, 8, 5), (3, 9, 8, 5), P1),
    (jnp.float32, (2, 7, 7, 6), (2, 7, 7, 1), "SAME"),  # shared logits
    (jnp.float32, (2, 7, 6, 6), (2, 7, 6, 3), "VALID"),  # grouped logits
    (jnp.bfloat16, (2, 9, 9, 4), (2, 9, 9, 4), P1),
])
def test_bounded_path_equals_the_unbounded_one(dtype, shape, logit_shape, padding):
    x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
    logits = _soft_gated(logit_shape, dtype=dtype)
    cot = jax.random.normal(jax.random.key(2), ops.lip_pool(x, logits, (3, 3), (2, 2),
                                                            padding).shape).astype(dtype)

    def value_and_grads(**kw):
        y, vjp = jax.vjp(lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), padding, **kw),
                         x, logits)
        return (y, *vjp(cot))

    tol = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    for got, want in zip(value_and_grads(logit_bounds=BOUNDS), value_and_grads()):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.float32(got), np.float32(want), **tol)


def test_bounded_path_has_no_statistics_or_cond_and_supports_forward_mode():
    x, logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), _soft_gated((2, 8, 8, 3))
    pool = lambda **kw: (lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1, **kw))
    grad = lambda f: jax.grad(lambda x, l: jnp.sum(f(x, l) ** 2), (0, 1))
    assert "cond" not in _primitives(jax.make_jaxpr(grad(pool(logit_bounds=BOUNDS)))(
        x, logits).jaxpr)
    assert "cond" in _primitives(jax.make_jaxpr(grad(pool()))(x, logits).jaxpr)
    tangents = (jnp.ones_like(x), jnp.ones_like(logits))
    got = jax.jvp(pool(logit_bounds=BOUNDS), (x, logits), tangents)
    want = jax.jvp(pool(), (x, logits), tangents)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_bounded_path_second_order_gradients_are_exact():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 5, 6, 2), jnp.float64)
        logits = _soft_gated((1, 5, 6, 2)).astype(jnp.float64)
        jax.test_util.check_grads(
            lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1, logit_bounds=BOUNDS),
            (x, logits), order=2, modes=["fwd", "rev"], atol=1e-7, rtol=1e-7)


def test_bounded_path_of_a_sharded_batch_has_no_collective():
    mesh = jax.make_mesh((8,), ("data",))
    x, logits = jax.random.normal(jax.random.key(0), (8, 7, 9, 4)), _soft_gated((8, 7, 9, 4))
    args = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, logits)]

    def run(x, l):
        y, vjp = jax.vjp(lambda x, l: ops.lip_pool(x, l, (3, 3), (2, 2), P1,
                                                   logit_bounds=BOUNDS), x, l)
        return (y, *vjp(y))

    hlo = jax.jit(run).lower(*args).compile().as_text()
    assert not [c for c in ("all-reduce", "all-gather", "all-to-all") if c in hlo]
    assert all(out.sharding.spec[0] == "data" for out in jax.jit(run)(*args))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e3])
def test_a_broken_promise_poisons_only_its_image(bad):
    """A NaN, inf or far-off logit outside the promise: its image's channel may be NaN,
    never a wrong number, and the rest of the batch is untouched."""
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    logits = _soft_gated(x.shape).at[1, 0, 0, 0].set(bad)
    got = ops.lip_pool(x, logits, (3, 3), (2, 2), P1, logit_bounds=BOUNDS)
    want = ops.lip_pool(x, logits, (3, 3), (2, 2), P1)
    intact = np.ones(got.shape, bool)
    intact[1, ..., 0] = False
    np.testing.assert_allclose(got[intact], want[intact], rtol=1e-6)
    hit = np.asarray(got[1, ..., 0])
    ok = ~np.isnan(hit)
    np.testing.assert_allclose(hit[ok], np.asarray(want[1, ..., 0])[ok], rtol=1e-5, atol=1e-6)


def test_bounds_choose_the_xla_graph_on_every_backend(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ops._kernel_backend(None, 2, bounded=True) is None
    assert ops._kernel_backend(None, 2, bounded=False) == "gpu"
    assert ops._kernel_backend("pallas_gpu", 2, bounded=True) == "gpu"


@pytest.mark.parametrize("bounds", [(0, 60), (0, 1e3), (1, 0), (np.nan, 1), (0, np.inf),
                                    "0, 12", (0, 1, 2), 12.0])
def test_bad_bounds_are_named(bounds):
    x = jnp.ones((1, 4, 4, 1))
    with pytest.raises(ValueError, match="logit_bounds must be two finite numbers"):
        ops.lip_pool(x, x, (2, 2), logit_bounds=bounds)


def test_traced_bounds_are_named():
    x = jnp.ones((1, 4, 4, 1))
    with pytest.raises(ValueError, match="logit_bounds must be two finite numbers"):
        jax.jit(lambda b: ops.lip_pool(x, x, (2, 2), logit_bounds=(0.0, b)))(12.0)


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1])(x)


@pytest.mark.parametrize("logit, bounded", [(L.ProjectionLogit(), True),
                                            (L.BottleneckLogit(width=4), True),
                                            (nn.remat(L.LogitHead)(), True),
                                            (_Dense(), False)])
def test_linen_lip_passes_its_logit_modules_bounds(logit, bounded):
    layer = L.LIP(logit)
    x = jnp.ones((2, 8, 8, 4))
    variables = layer.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v: layer.apply(v, x))(variables).jaxpr
    assert ("cond" not in _primitives(jaxpr)) == bounded


def test_nnx_lip_passes_its_logit_modules_bounds():
    rngs = nnx.Rngs(0)
    x = jnp.ones((2, 8, 8, 4))
    for logit, bounded in [(N.ProjectionLogit(4, rngs=rngs), True),
                           (N.BottleneckLogit(4, width=4, rngs=rngs), True),
                           (nnx.Linear(4, 4, rngs=rngs), False)]:
        layer = N.LIP(logit)
        jaxpr = jax.make_jaxpr(lambda x: layer(x))(x).jaxpr
        assert ("cond" not in _primitives(jaxpr)) == bounded


TINY = {"lip_resnet50": dict(width=8, logit_width=8, stage_sizes=(1, 1, 1, 1)),
        "lip_densenet121": dict(growth_rate=4, init_features=8, block_sizes=(1, 2, 1),
                                logit_width=8),
        "lip_cnn": dict(widths=(4, 8, 8), convs_per_stage=(1, 2, 1))}


@pytest.mark.parametrize("name", list(TINY))
def test_every_lip_layer_of_the_zoo_takes_the_bounded_path(name):
    model = models.create_model(name, num_classes=3, **TINY[name])
    x = jnp.zeros((2, 32, 32, 1 if name == "lip_cnn" else 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    train = lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])
    assert "cond" not in _primitives(jax.make_jaxpr(train)(variables).jaxpr)
