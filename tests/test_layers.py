"""LIP layers: Linen and NNX agree, the bridges work, init and dtypes are as documented."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lip_jax import linen as L, nnx as N, ops

C = 8
X = jax.random.normal(jax.random.key(0), (2, 9, 8, C))

# (Linen module, NNX module factory) pairs with the same variable tree.
PAIRS = {
    "projection": (lambda: L.LIP(L.ProjectionLogit(zero_init=False)),
                   lambda rngs: N.LIP(N.ProjectionLogit(C, zero_init=False, rngs=rngs))),
    "simplified": (lambda: L.LIP(L.SimplifiedLogit(zero_init=False)),
                   lambda rngs: N.LIP(N.SimplifiedLogit(C, zero_init=False, rngs=rngs))),
    "bottleneck": (lambda: L.LIP(L.BottleneckLogit(width=16, zero_init=False), (2, 2), (2, 2),
                                 "VALID"),
                   lambda rngs: N.LIP(N.BottleneckLogit(C, width=16, zero_init=False, rngs=rngs),
                                      (2, 2), (2, 2), "VALID")),
    "shared-logit": (lambda: L.LIP(L.ProjectionLogit(1, zero_init=False)),
                     lambda rngs: N.LIP(N.ProjectionLogit(C, 1, zero_init=False, rngs=rngs))),
}


def _perturbed(variables, seed=1):
    """Non-trivial values everywhere (zeros and ones would hide mix-ups)."""
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [v + 0.3 * jax.random.normal(k, v.shape, v.dtype)
                                     for v, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", PAIRS)
def test_linen_and_nnx_give_equal_outputs_from_equal_variables(name):
    make_linen, make_nnx = PAIRS[name]
    params = _perturbed(make_linen().init(jax.random.key(0), X)["params"])
    graph, state = nnx.split(make_nnx(nnx.Rngs(0)))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(state)) == jax.tree.map(jnp.shape, params)
    nnx.replace_by_pure_dict(state, params)
    expected = make_linen().apply({"params": params}, X)
    np.testing.assert_allclose(nnx.merge(graph, state)(X), expected, rtol=1e-6, atol=1e-6)
    assert expected.shape[1:3] == ((5, 4) if name != "bottleneck" else (4, 4))


def test_zero_initialised_logits_start_as_average_pooling():
    average = ops.average_pool(X, (3, 3), (2, 2), ((1, 1), (1, 1)))
    for module in (L.LIP(L.ProjectionLogit()), L.LIP(L.SimplifiedLogit()),
                   L.LIP(L.BottleneckLogit(width=16))):
        variables = module.init(jax.random.key(0), X)
        np.testing.assert_allclose(module.apply(variables, X), average, rtol=1e-5, atol=1e-6)
    module = L.LIP(L.ProjectionLogit(zero_init=False))
    assert not np.allclose(module.apply(module.init(jax.random.key(0), X), X), average,
                           atol=1e-3)


def test_logit_modules_learn():
    module = L.LIP(L.BottleneckLogit(width=16))
    params = module.init(jax.random.key(0), X)["params"]
    grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, X) ** 3))(params)
    head = grads["logit"]["head"]["conv"]["kernel"]
    assert bool(jnp.all(jnp.isfinite(head))) and float(jnp.abs(head).max()) > 0


def test_linen_layer_inside_an_nnx_model():
    linen_lip = L.LIP(L.ProjectionLogit(zero_init=False))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.pool = nnx.bridge.ToNNX(linen_lip, rngs=rngs)
            self.out = nnx.Linear(C, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.pool(x).mean((1, 2)))

    net = nnx.bridge.lazy_init(Net(nnx.Rngs(0)), X)
    params = nnx.to_pure_dict(nnx.state(net.pool, nnx.Param))
    pooled = linen_lip.apply({"params": params}, X)
    np.testing.assert_allclose(net(X), net.out(pooled.mean((1, 2))), rtol=1e-6, atol=1e-6)


def test_nnx_layer_inside_a_linen_model():
    def make(rngs):
        return N.LIP(N.ProjectionLogit(C, zero_init=False, rngs=rngs))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nnx.bridge.ToLinen(make, name="pool")(x).mean((1, 2)))

    variables = Net().init(jax.random.key(0), X)
    pool_params = jax.tree.map(lambda v: getattr(v, "value", v), variables["params"]["pool"],
                               is_leaf=lambda v: hasattr(v, "value"))
    graph, state = nnx.split(make(nnx.Rngs(1)))
    nnx.replace_by_pure_dict(state, pool_params)
    pooled = nnx.merge(graph, state)(X)
    dense = variables["params"]["Dense_0"]
    np.testing.assert_allclose(Net().apply(variables, X),
                               pooled.mean((1, 2)) @ dense["kernel"] + dense["bias"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_compute_dtype(dtype):
    module = L.LIP(L.BottleneckLogit(width=16, zero_init=False, dtype=dtype))
    variables = module.init(jax.random.key(0), X)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    out = module.apply(variables, X.astype(dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(jnp.float32), module.apply(variables, X), atol=0.1)


def test_param_dtype():
    module = N.LIP(N.BottleneckLogit(C, width=16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    dtypes = {v.dtype for v in jax.tree.leaves(nnx.state(module, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert module(X).dtype == jnp.float32


def test_implementation_is_passed_to_lip_pool():
    """Both front ends take `lip_pool`'s `implementation`: the XLA graph's forward mode,
    a kernel's values and its refusal of forward mode (so the kernel did run), and an
    unknown name refused by `lip_pool`."""
    linen = L.LIP(L.ProjectionLogit(zero_init=False), implementation="xla")
    params = _perturbed(linen.init(jax.random.key(0), X)["params"])
    graph, state = nnx.split(N.LIP(N.ProjectionLogit(C, zero_init=False, rngs=nnx.Rngs(0)),
                                   implementation="pallas_gpu"))
    nnx.replace_by_pure_dict(state, params)
    kernel = nnx.merge(graph, state)
    expected = linen.apply({"params": params}, X)
    np.testing.assert_allclose(kernel(X), expected, rtol=1e-5, atol=1e-5)
    tangent = jax.jvp(lambda x: linen.apply({"params": params}, x), (X,), (X,))[1]
    assert tangent.shape == expected.shape
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(kernel, (X,), (X,))
    with pytest.raises(ValueError, match="implementation must be None or one of"):
        L.LIP(L.ProjectionLogit(), implementation="cuda").init(jax.random.key(0), X)


@pytest.mark.parametrize("linen, nnx_module, error, match", [
    (lambda: L.LogitHead(kernel_size=2), lambda r: N.LogitHead(4, kernel_size=2, rngs=r),
     ValueError, "kernel_size must be odd .* got 2"),
    (lambda: L.LogitHead(features=0), lambda r: N.LogitHead(4, 0, rngs=r),
     ValueError, "features must be a positive int, got 0"),
    (lambda: L.BottleneckLogit(width=0), lambda r: N.BottleneckLogit(4, width=0, rngs=r),
     ValueError, "width must be a positive int, got 0"),
    (lambda: L.LIP(None), lambda r: N.LIP(None), TypeError,
     r"logit must be a logit module or function \(x -> logits\), got None"),
    (lambda: L.GlobalLIP(None), lambda r: N.GlobalLIP(None), TypeError,
     r"logit must be a logit module or function \(x -> logits\), got None"),
    (lambda: L.AdaptiveLIP(L.ProjectionLogit(), 2.5),
     lambda r: N.AdaptiveLIP(N.ProjectionLogit(4, rngs=r), 2.5)(jnp.ones((1, 8, 8, 4))),
     TypeError, "output_size must be an int or 2 ints, got 2.5"),
])
def test_bad_logit_modules_are_named_in_both_front_ends(linen, nnx_module, error, match):
    """They failed in XLA's verifier, with ZeroDivisionError, 'NoneType' object is not
    callable or "'float' object is not iterable"; features=0 silently meant the input's."""
    with pytest.raises(error, match=match):
        linen().init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))
    with pytest.raises(error, match=match):
        nnx_module(nnx.Rngs(0))


@pytest.mark.parametrize("module, x", [
    (lambda r: N.LogitHead(4, kernel_size=3, spatial_ndim=3, zero_init=False, rngs=r),
     jnp.ones((2, 8, 8, 4))),
    (lambda r: N.BottleneckLogit(4, rngs=r), jnp.ones((1, 4, 6, 6, 4))),
    (lambda r: N.LIP(N.ProjectionLogit(3, rngs=r)), jnp.ones((2, 8, 8, 4))),
])
def test_nnx_logit_modules_name_inputs_of_another_rank_or_channel_count(module, x):
    """nnx.Conv took a batch of 2-D images for one unbatched 3-D volume (mixing images)
    and a 3-D volume for 2-D slices; other channel counts failed inside the conv."""
    with pytest.raises(ValueError, match=re.escape(f"inputs of shape {x.shape}: expected (N, ")):
        module(nnx.Rngs(0))(x)
