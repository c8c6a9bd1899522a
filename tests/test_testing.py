"""`lip_jax.testing` itself: the references against the ops (float64), PyTorch, Flax and
finite differences; the strategies' draws; the checks failing on broken poolings."""

import inspect
import math
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lip_jax
from lip_jax import ops
from lip_jax.testing import (check_average_pool_properties, check_lan_properties,
                             check_lip_properties, check_soft_pool_properties,
                             check_tempered_max_pool_properties, reference, strategies)

P1 = ((1, 1), (1, 1))
OPS = ["lan_pool", "lip_pool", "average_pool", "soft_pool", "tempered_max_pool",
       "window_share", "blur_pool", "dpp_pool", "global_lip_pool", "adaptive_lip_pool",
       "roi_lip_pool"]
BOXES = np.array([[0, 1.3, 0.2, 5.7, 6.1], [1, -3.0, -2.0, 4.0, 3.0],
                  [1, 5.0, 4.0, 12.5, 11.0], [0, 2.0, 2.0, 2.4, 2.2]])


@pytest.mark.parametrize("name", OPS)
def test_each_reference_has_its_ops_signature(name):
    params = lambda f: [(p.name, p.kind, p.default)
                        for p in inspect.signature(f).parameters.values()]
    assert params(getattr(reference, name)) == params(getattr(lip_jax, name))


def _normal(rng, *shape, scale=1.0, offset=0.0):
    return offset + scale * rng.standard_normal(shape)


# name: (op, differentiable arrays from a generator, geometry and other arguments)
CASES = {
    "lan_pool, grouped weights, ceil_mode": (
        "lan_pool", lambda r: (_normal(r, 2, 7, 6, 6), np.exp(_normal(r, 2, 7, 6, 3))),
        ((3, 3), (2, 2), P1), dict(ceil_mode=True)),
    "lip_pool, 3-D, two batch dims": (
        "lip_pool", lambda r: (_normal(r, 2, 1, 5, 4, 6, 2), _normal(r, 2, 1, 5, 4, 6, 2, scale=3)),
        ((3, 2, 3), (2, 1, 2), ((1, 1), (0, 1), (2, 0))), {}),
    "lip_pool, shared logits spread 1e6 offset 1e12": (
        "lip_pool", lambda r: (_normal(r, 2, 7, 8, 3), _normal(r, 2, 7, 8, 1, scale=1e6,
                                                                offset=1e12)),
        ((3, 3), (2, 2), "SAME"), dict(ceil_mode=True)),
    "lip_pool, logits spread 30 offset -1e12, ceil_mode": (
        "lip_pool", lambda r: (_normal(r, 1, 9, 3), _normal(r, 1, 9, 3, scale=30, offset=-1e12)),
        ((4,), (3,), ((2, 1),)), dict(ceil_mode=True)),
    "average_pool, count_include_pad, ceil_mode": (
        "average_pool", lambda r: (_normal(r, 2, 7, 8, 3),), ((3, 3), (2, 2), P1),
        dict(count_include_pad=True, ceil_mode=True)),
    "average_pool, padding excluded": (
        "average_pool", lambda r: (_normal(r, 2, 7, 8, 3),), ((3, 2), (2, 3), "SAME"), {}),
    "window_share, spread 1e6": (
        "window_share", lambda r: (_normal(r, 2, 7, 6, 3, scale=1e6),), ((3, 3), (2, 2), P1),
        dict(ceil_mode=True)),
    **{f"blur_pool, {mode}": (
        "blur_pool", lambda r: (_normal(r, 2, 7, 6, 3),), ((3, 4), (2, 2), ((1, 1), (1, 2))),
        dict(padding_mode=mode, ceil_mode=True)) for mode in reference.PADDING_MODES},
    "dpp_pool, asymmetric, per channel": (
        "dpp_pool", lambda r: (_normal(r, 2, 7, 6, 3), r.uniform(0.1, 2, 3), r.uniform(0, 3, 3)),
        ((3, 3), (2, 2), P1), dict(asymmetric=True, ceil_mode=True)),
    "dpp_pool, symmetric, scalars": (
        "dpp_pool", lambda r: (_normal(r, 1, 9, 2), np.array(0.5), np.array(1.5)),
        ((3,), (2,), "SAME"), {}),
    "global_lip_pool, shared logits": (
        "global_lip_pool", lambda r: (_normal(r, 2, 5, 4, 3), _normal(r, 2, 5, 4, 1, scale=1e6)),
        (), {}),
    "adaptive_lip_pool": (
        "adaptive_lip_pool", lambda r: (_normal(r, 2, 7, 11, 3), _normal(r, 2, 7, 11, 3, scale=5)),
        ((3, 4),), {}),
    "roi_lip_pool": (
        "roi_lip_pool", lambda r: (_normal(r, 2, 9, 8, 3), _normal(r, 2, 9, 8, 1, scale=3)),
        (BOXES, (3, 2), 0.8, 2, True), {}),
}


@pytest.mark.parametrize("name", CASES)
def test_reference_equals_the_op_in_float64(name):
    """Values and every gradient to 1e-10; logits up to 1e12 stay exact in both."""
    op, make, args, kwargs = CASES[name]
    pool = lambda *a: getattr(lip_jax, op)(*a, *args, **kwargs)
    with jax.enable_x64(True):
        arrays = make(np.random.default_rng(len(name)))
        y = jax.eval_shape(pool, *arrays)
        g = np.random.default_rng(1).standard_normal(y.shape)
        y, grads = jax.jit(lambda a, g: (lambda y, vjp: (y, vjp(g)))(*jax.vjp(pool, *a)))(arrays, g)
    ref = getattr(reference, op)
    np.testing.assert_allclose(y, ref(*arrays, *args, **kwargs), rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, reference.vjp(ref, g, *arrays, *args, **kwargs), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * max(1, np.abs(want).max()))


def _finite_difference_vjp(f, arrays, g, h=1e-6):
    """`g . df/da` for each array by central differences."""
    grads = []
    for i, a in enumerate(arrays):
        grad = np.zeros(a.shape)
        for index in np.ndindex(a.shape):
            step = np.zeros(a.shape)
            step[index] = h
            at = lambda d: f(*arrays[:i], a + d, *arrays[i + 1:])
            grad[index] = np.sum(g * (at(step) - at(-step))) / (2 * h)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("op, arrays, args, kwargs", [
    ("lan_pool", (2, 1), ((3, 2), (2, 1), ((1, 1), (0, 1))), dict(ceil_mode=True)),
    ("lip_pool", (2, 1), ((2, 3), (1, 2), "SAME"), {}),
    ("average_pool", (1,), ((3, 3), (2, 2), P1), dict(count_include_pad=True, ceil_mode=True)),
    ("soft_pool", (1,), ((2, 2), (1, 1), "VALID"), {}),
    ("tempered_max_pool", (1,), ((3, 3), (2, 2), P1), dict(beta=3.0)),
    ("window_share", (1,), ((3, 2), (2, 1), "SAME"), {}),
    ("blur_pool", (1,), ((3, 3), (2, 2), P1), dict(padding_mode="reflect")),
    ("blur_pool", (1,), ((4, 3), (2, 2), ((1, 2), (1, 1))), dict(padding_mode="replicate")),
    ("dpp_pool", (1, 0, 0), ((3, 3), (2, 2), P1), dict(asymmetric=False)),
    ("global_lip_pool", (2, 1), (), {}),
    ("adaptive_lip_pool", (2, 1), ((2, 3),), {}),
    ("roi_lip_pool", (2, 2), (BOXES[[0, 3]], (2, 2), 0.7, 2, False), {}),
])
def test_reference_vjp_equals_finite_differences_of_the_reference(op, arrays, args, kwargs):
    """The closed forms, checked without JAX. `arrays` gives each array's kind: 2 inputs
    (1, 5, 4, 2), 1 logits (1, 5, 4, 2 or shared), 0 a per-channel parameter (2,)."""
    rng = np.random.default_rng(0)
    shapes = {2: (1, 5, 4, 2), 1: (1, 5, 4, 2) if op != "lip_pool" else (1, 5, 4, 1), 0: (2,)}
    values = [rng.uniform(0.2, 1.5, shapes[k]) if k == 0 else rng.standard_normal(shapes[k])
              for k in arrays]
    if op == "lan_pool":
        values[1] = np.exp(values[1])
    ref = getattr(reference, op)
    f = lambda *a: ref(*a, *args, **kwargs)
    g = rng.standard_normal(f(*values).shape)
    for got, want in zip(reference.vjp(ref, g, *values, *args, **kwargs),
                         _finite_difference_vjp(f, values, g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_reference_is_exact_at_any_logit_offset():
    """Logits on a grid of 2^-10 plus 2^40 are exact in float64: the values and VJP
    equal those of the unshifted logits to rounding, spread 1e6 included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    g = rng.standard_normal((2, 4, 3, 3))
    for spread in (1.0, 1e6):
        logits = np.round(spread * rng.standard_normal(x.shape) * 1024) / 1024
        results = [(reference.lip_pool(x, l, (3, 3), (2, 2), P1),
                    *reference.vjp(reference.lip_pool, g, x, l, (3, 3), (2, 2), P1))
                   for l in (logits, logits + 2.0 ** 40)]
        for a, b in zip(*results):
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _nchw(torch, a):
    return torch.tensor(np.asarray(a).transpose(0, 3, 1, 2), requires_grad=True)


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 0), (4, 3, 2), (3, 1, 1)])
def test_average_pool_and_max_pool_references_equal_torch(torch, kernel, stride, padding,
                                                          count_include_pad, ceil_mode):
    """PyTorch's avg_pool2d (values and gradient) and max_pool2d, both rules of ceil_mode."""
    rng = np.random.default_rng(kernel + stride)
    x = rng.standard_normal((2, 7, 8, 3))
    geometry = ((kernel, kernel), (stride, stride), ((padding, padding),) * 2)
    xt = _nchw(torch, x)
    yt = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode,
                                        count_include_pad=count_include_pad)
    g = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(g))
    kwargs = dict(count_include_pad=count_include_pad, ceil_mode=ceil_mode)
    np.testing.assert_allclose(reference.average_pool(x, *geometry, **kwargs), _nhwc(yt),
                               rtol=1e-12, atol=1e-12)
    (dx,) = reference.vjp(reference.average_pool, g.transpose(0, 2, 3, 1), x, *geometry, **kwargs)
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-12, atol=1e-12)
    top = torch.nn.functional.max_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode)
    np.testing.assert_allclose(reference.max_pool(x, *geometry, ceil_mode=ceil_mode), _nhwc(top))


@pytest.mark.parametrize("mode, torch_mode", [("reflect", "reflect"), ("replicate", "replicate"),
                                              ("zeros", "constant")])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (4, 2), (2, 1), (5, 3)])
def test_blur_pool_reference_equals_torch_blurpool(torch, mode, torch_mode, kernel, stride):
    """antialiased-cnns' BlurPool: pad ((k - 1) // 2, k // 2) in the mode, then a
    depthwise convolution with the normalised binomial filter; values and gradient."""
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((2, 7, 8, 3))
    lo, hi = (kernel - 1) // 2, kernel // 2
    row = np.array([math.comb(kernel - 1, i) for i in range(kernel)], np.float64)
    filt = torch.tensor(np.outer(row, row) / row.sum() ** 2).expand(3, 1, kernel, kernel)
    xt = _nchw(torch, x)
    padded = torch.nn.functional.pad(xt, (lo, hi, lo, hi), mode=torch_mode)
    yt = torch.nn.functional.conv2d(padded, filt, stride=stride, groups=3)
    g = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(g))
    geometry = ((kernel, kernel), (stride, stride), ((lo, hi), (lo, hi)))
    np.testing.assert_allclose(reference.blur_pool(x, *geometry, padding_mode=mode), _nhwc(yt),
                               rtol=1e-12, atol=1e-12)
    (dx,) = reference.vjp(reference.blur_pool, g.transpose(0, 2, 3, 1), x, *geometry,
                          padding_mode=mode)
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-12, atol=1e-12)


def test_lip_and_adaptive_references_equal_torch(torch):
    """The official lip2d (avg_pool2d of x e^l over avg_pool2d of e^l; logits in (0, 12))
    and adaptive_avg_pool2d (zero logits), values and gradients."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 8, 3))
    logits = 12 / (1 + np.exp(-rng.standard_normal(x.shape)))
    xt, lt = _nchw(torch, x), _nchw(torch, logits)
    w = lt.exp()
    avg = lambda a: torch.nn.functional.avg_pool2d(a, 3, 2, 1)
    yt = avg(xt * w) / avg(w)
    g = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(reference.lip_pool(x, logits, (3, 3), (2, 2), P1), _nhwc(yt),
                               rtol=1e-12)
    dx, dl = reference.vjp(reference.lip_pool, g.transpose(0, 2, 3, 1), x, logits, (3, 3),
                           (2, 2), P1)
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dl, _nhwc(lt.grad), rtol=1e-10, atol=1e-12)
    xt = _nchw(torch, x)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, (3, 5))
    yt.backward(torch.tensor(np.ones(yt.shape)))
    zero = np.zeros(x.shape[:-1] + (1,))
    np.testing.assert_allclose(reference.adaptive_lip_pool(x, zero, (3, 5)), _nhwc(yt), rtol=1e-12)
    np.testing.assert_allclose(reference.vjp(reference.adaptive_lip_pool, np.ones((2, 3, 5, 3)),
                                             x, zero, (3, 5))[0], _nhwc(xt.grad), rtol=1e-12)


def _flax_pool(pool, x, window, strides, padding, **kw):
    """flax.linen pools need exactly one batch dim."""
    n = len(window)
    flat = x.reshape(-1, *x.shape[x.ndim - n - 1:])
    out = pool(flat, window, strides, padding, **kw)
    return out.reshape(*x.shape[:x.ndim - n - 1], *out.shape[1:])


@settings(max_examples=10, deadline=None)
@given(strategies.window_geometries(spatial_ndim=2, ceil_mode=False), st.integers(0, 2 ** 16))
def test_average_and_max_references_equal_flax(geometry, seed):
    x = np.random.default_rng(seed).standard_normal(geometry.input_shape).astype(np.float32)
    for include in (False, True):
        np.testing.assert_allclose(
            reference.average_pool(x, *geometry.args, count_include_pad=include),
            _flax_pool(nn.avg_pool, x, *geometry.args, count_include_pad=include),
            rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference.max_pool(x, *geometry.args),
                               _flax_pool(nn.max_pool, x, *geometry.args))


@settings(max_examples=40, deadline=None)
@given(strategies.window_geometries())
def test_geometries_are_valid_for_the_ops_and_the_reference_alike(geometry):
    x = jax.ShapeDtypeStruct(geometry.input_shape, jnp.float32)
    out = jax.eval_shape(lambda x: ops.average_pool(x, *geometry.args, **geometry.kwargs), x)
    n = len(geometry.window_shape)
    windows = reference.windows(geometry.input_shape, *geometry.args, geometry.ceil_mode)
    assert out.shape[x.ndim - n - 1:-1] == windows.out_shape
    assert all(taps.inside.any() for taps in windows.taps)


@settings(max_examples=40, deadline=None)
@given(strategies.window_geometries(valid=False))
def test_invalid_geometries_are_refused_by_the_ops_and_the_reference(geometry):
    x = np.zeros(geometry.input_shape, np.float32)
    for pool in (ops.average_pool, reference.average_pool):
        with pytest.raises(ValueError, match="padding only|larger than"):
            pool(x, *geometry.args, **geometry.kwargs)


@settings(max_examples=30, deadline=None)
@given(strategies.input_shapes(), strategies.inputs(), strategies.logits(), strategies.weights(),
       strategies.pool_examples())
def test_argument_free_strategies_draw_sensible_defaults(shape, x, logits, weights, example):
    assert 2 <= len(shape) <= 6 and min(shape) >= 1
    assert x.dtype in (jnp.float32, jnp.bfloat16) and np.all(np.abs(x.astype(np.float64)) <= 1)
    assert np.all(np.isfinite(logits.astype(np.float64)))
    assert np.all(weights.astype(np.float64) > 0) and np.all(np.isfinite(weights))
    # the logits broadcast to the inputs as the ops take them: per feature, shared, grouped
    reference.lip_pool(example.inputs, example.logits, *example.geometry.args,
                       **example.geometry.kwargs)
    assert str(example.input_seed) in str(example) and str(example.geometry) in str(example)


@pytest.mark.parametrize("what, strategy, condition", [
    ("logits spread 1e6", strategies.logit_specs(), lambda s: s.spread == 1e6),
    ("float32 logits spread 1e6 with offset 1e12", strategies.logit_specs(spreads=(1e6,)),
     lambda s: s.dtype == "float32" and abs(s.offset) == 1e12),
    ("integer logits", strategies.logits(), lambda l: l.dtype == np.int32),
    ("grouped logits", strategies.logit_specs(), lambda s: s.layout == "grouped"),
    ("bfloat16 inputs", strategies.inputs(), lambda x: x.dtype == jnp.bfloat16),
    ("SAME padding with ceil_mode", strategies.window_geometries(),
     lambda g: g.padding == "SAME" and g.ceil_mode),
    ("3-D windows with pairs of padding", strategies.window_geometries(),
     lambda g: len(g.window_shape) == 3 and not isinstance(g.padding, str)),
])
def test_strategies_reach(what, strategy, condition):
    from hypothesis import find  # noqa: PLC0415

    find(strategy, condition, settings=settings(max_examples=500, database=None))


def exp0_padding(x, l, window_shape, strides=None, padding="VALID", **kw):
    """Padding weighs exp(0): inputs and logits padded with zeros, then VALID pooling."""
    pads = ops.pool_window(x.shape, window_shape, strides, padding).pads
    l = jnp.broadcast_to(l, x.shape[:-1] + jnp.shape(l)[-1:])
    return lip_jax.lip_pool(jnp.pad(x, pads), jnp.pad(l, pads), window_shape, strides, "VALID",
                            **kw)


def second_term_dropped(x, l, *geometry, **kw):
    """SoftPool's CUDA gradient: dlogits = w x T(g / S) = x dx, without - w T(g y / S)."""
    pool = lambda x, l: lip_jax.lip_pool(x, l, *geometry, **kw)
    f = jax.custom_vjp(pool)
    f.defvjp(lambda x, l: (pool(x, l), (x, l)),
             lambda res, g: (lambda dx: (dx, (res[0] * dx).astype(res[1].dtype)))(
                 jax.vjp(pool, *res)[1](g)[0]))
    return f(x, l)


def overflowing(x, l, *geometry, **kw):
    """exp(logits) unshifted: inf / inf beyond logits of 88 in float32."""
    return lip_jax.lan_pool(x, jnp.exp(l), *geometry, **kw)


FEATURE_LOGITS = strategies.pool_examples(layouts=("feature",), integer=False)


@pytest.mark.parametrize("broken, match", [
    (exp0_padding, "reference: values"),
    (second_term_dropped, "reference: VJP by logits"),
    (overflowing, "large_beta|reference: values|bounds"),
])
def test_check_lip_properties_fails_on_a_broken_pooling(broken, match):
    with pytest.raises(AssertionError, match=match) as failure:
        check_lip_properties(broken, examples=FEATURE_LOGITS)
    message = str(failure.value)
    assert message.startswith("check_lip_properties: ")
    for part in ("example: inputs float32", "seed", "window_shape=", "logits float32"):
        assert part in message


def test_check_average_pool_properties_fails_when_padding_always_counts():
    broken = lambda x, *geometry, count_include_pad, **kw: ops.average_pool(
        x, *geometry, count_include_pad=True, **kw)
    with pytest.raises(AssertionError, match=r"count_include_pad=False.*reference: values"):
        check_average_pool_properties(broken)


def test_skip_names_the_properties():
    with pytest.raises(ValueError, match="names no property of check_lip_properties"):
        check_lip_properties(max_examples=1, skip=("vmapp",))


PROPERTIES = {
    check_lip_properties: ("reference", "bounds", "shift", "zero_logits", "large_beta", "vmap",
                           "variants"),
    check_lan_properties: ("reference", "bounds", "scale", "uniform", "subsampling", "vmap",
                           "variants"),
    check_average_pool_properties: ("reference", "bounds", "constant", "vmap", "variants"),
    check_soft_pool_properties: ("reference", "bounds", "vmap", "variants"),
    check_tempered_max_pool_properties: ("reference", "rising", "large_beta", "vmap", "variants"),
}


@pytest.mark.parametrize("check", PROPERTIES, ids=lambda check: check.__name__)
def test_a_skip_of_every_property_is_refused(check):
    """A check that would check nothing (here of a pooling that returns 1e9) refuses."""
    with pytest.raises(ValueError, match=f"covers every property of {check.__name__}"):
        check(lambda x, *args, **kwargs: x * 0 + 1e9, max_examples=1, skip=PROPERTIES[check])


def _returns_none(*args, **kwargs):
    return None


@pytest.mark.parametrize("call, error, match", [
    (lambda: check_lip_properties(3), TypeError, "fn must be a pooling function, got 3"),
    (lambda: check_lip_properties(_returns_none, max_examples=1), TypeError,
     "check_lip_properties: fn must return an array, got NoneType"),
    (lambda: check_lip_properties(_returns_none, max_examples=1, skip=PROPERTIES[
        check_lip_properties][:-2]), TypeError, "fn must return an array"),  # vmap first
    (lambda: check_lan_properties(_returns_none, max_examples=1, skip=tuple(
        p for p in PROPERTIES[check_lan_properties] if p != "subsampling")), TypeError,
     "check_lan_properties: fn must return an array"),
    (lambda: check_lip_properties(skip=None), TypeError,
     "skip must be a property name or a sequence of them, got None"),
    (lambda: check_lip_properties(examples=[1, 2]), TypeError,
     r"examples must be a strategy of strategies.Example .*got \[1, 2\]"),
    (lambda: check_lip_properties(max_examples=1, examples=strategies.pool_examples(
        with_logits=False)), ValueError, "check_lip_properties needs examples with logits"),
    (lambda: check_lan_properties(max_examples=1, examples=strategies.pool_examples()),
     ValueError, "check_lan_properties needs examples with weights"),
])
def test_check_misuse_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float64_examples_without_x64_are_refused_naming_x64():
    """Not the correct lip_pool's "output float32, inputs float64"."""
    examples = strategies.pool_examples(dtypes=("float64",))
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64 inputs need "
                                              "jax_enable_x64"):
        check_lip_properties(max_examples=1, examples=examples)


@pytest.mark.parametrize("build, error, match", [
    (lambda: strategies.window_geometries((1, 3, 3, 1), paddings=("valid",)), ValueError,
     r"paddings must be one or more of 'VALID', 'SAME', 'pairs', got \('valid',\)"),
    (lambda: strategies.window_geometries((1, 4, 4, 1), spatial_ndim=5), ValueError,
     r"input_shape \(1, 4, 4, 1\) is too short for spatial_ndim=5"),
    (lambda: strategies.window_geometries((1, 4, 4, 1), spatial_ndim=0), ValueError,
     "spatial_ndim must be a positive int, got 0"),
    (lambda: strategies.window_geometries(spatial_ndim=0), ValueError,
     "spatial_ndim must be a positive int, got 0"),
    (lambda: strategies.window_geometries((1, 8, 1), max_stride=0), ValueError,
     "max_stride must be a positive int, got 0"),
    (lambda: strategies.window_geometries(max_window=0), ValueError,
     "max_window must be a positive int, got 0"),
    (lambda: strategies.window_geometries((8,)), ValueError,
     r"input_shape \(8,\) is too short for spatial_ndim=1"),
    (lambda: strategies.window_geometries((4, 4, 1), spatial_ndim=3), ValueError,
     r"input_shape \(4, 4, 1\) is too short for spatial_ndim=3"),
    (lambda: strategies.window_geometries((2, 0, 4, 3)), ValueError,
     r"input_shape must be one or more positive ints, got \(2, 0, 4, 3\)"),
    (lambda: strategies.input_shapes(max_size=0), ValueError,
     "max_size must be a positive int, got 0"),
    (lambda: strategies.input_shapes(max_batch_dims=-1), ValueError,
     "max_batch_dims must be a non-negative int, got -1"),
    (lambda: strategies.inputs((2, 3, 1), dtypes=("int32",)), TypeError,
     "dtypes: expected a floating dtype .*got 'int32'"),
    (lambda: strategies.logits(()), ValueError,
     r"shape must be one or more positive ints, got \(\)"),
    (lambda: strategies.logits(layouts=("bogus",)), ValueError,
     r"layouts must be one or more of 'feature', .*got \('bogus',\)"),
    (lambda: strategies.logits(dtype="int32"), TypeError,
     "dtype: expected a floating dtype .*got 'int32'"),
    (lambda: strategies.logits((1, 4, 4, 3), layouts=("grouped",)), ValueError,
     r"layouts=\('grouped',\) fit no logits for inputs of shape \(1, 4, 4, 3\)"),
    (lambda: strategies.logits(spreads=(1e40,), integer=False), ValueError,
     r"spreads=\(1e\+40,\) with offsets=.*none fits float32"),
    (lambda: strategies.weights(integer=True), TypeError,
     "weights take no integer= .*got integer=True"),
    (lambda: strategies.pool_examples(with_weights=True, integer=True), TypeError,
     "weights take no integer="),
    (lambda: strategies.pool_examples(dtypes=("float32", "int32")), TypeError,
     "dtypes: expected a floating dtype .*got 'int32'"),
    (lambda: strategies.pool_examples(dtypes=("float32", "float16"), spreads=(1e6,)),
     ValueError, r"spreads=\(1000000.0,\) with offsets=.*none fits float16"),
    (lambda: strategies.pool_examples(with_logits=False, layouts=("feature",)), TypeError,
     r"takes no logit arguments, got \['layouts'\]"),
    (lambda: strategies.pool_examples(geometries=(1, 2)), TypeError,
     r"geometries must be a strategy of Geometry .*got \(1, 2\)"),
])
def test_strategies_refuse_bad_arguments_when_built(build, error, match):
    """Before any draw, one line naming the argument (not hypothesis' or NumPy's errors)."""
    with pytest.raises(error, match=match):
        build()


@settings(max_examples=10, deadline=None)
@given(strategies.logit_specs(layouts=("grouped",)))
def test_grouped_logits_draw_only_shapes_that_have_groups(spec):
    assert spec.layout == "grouped" and 1 < spec.shape[-1]


def test_vjp_of_a_function_without_one_is_refused_by_name():
    with pytest.raises(ValueError, match="'max_pool' is not a reference op with a VJP"):
        reference.vjp(reference.max_pool, np.ones((1, 1, 1)), np.ones((1, 2, 1)), (2,))
    with pytest.raises(ValueError, match=r"cotangent of shape \(1, 2, 1\)"):
        reference.vjp(reference.lip_pool, np.ones((1, 2, 1)), np.ones((1, 2, 1)), 0.0, (2,))


def test_import_lip_jax_needs_neither_hypothesis_nor_chex():
    """lip_jax and the references import without them; the checks name the extra."""
    code = (
        "import sys\n"
        "sys.modules['hypothesis'] = sys.modules['chex'] = None\n"
        "import lip_jax, lip_jax.testing, lip_jax.testing.reference\n"
        "try:\n"
        "    from lip_jax.testing import check_lip_properties\n"
        "except ImportError as e:\n"
        "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "pip install 'lip-jax[testing]'" in done.stdout
