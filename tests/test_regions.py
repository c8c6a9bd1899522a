"""Global, adaptive and RoI LIP: zero logits give the classical pooling (PyTorch,
torchvision), logits beta * inputs tend to the max over each region, gradients exact."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from lip_jax import adaptive_lip_pool, global_lip_pool, roi_lip_pool
from lip_jax import linen as L, nnx as N
from lip_jax.testing import reference

torch = pytest.importorskip("torch")
try:  # torchvision's wheels need the matching torch build (CUDA or CPU); the tests
    import torchvision.ops as torchvision_ops  # also run without it, on reference.roi_align
except (ImportError, RuntimeError, OSError):
    torchvision_ops = None

to_nchw = lambda a: torch.tensor(np.asarray(a)).permute(0, 3, 1, 2)
to_nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 7, 11, 3)).astype(np.float32)
FEATURES = RNG.standard_normal((2, 9, 8, 3)).astype(np.float32)
BOXES = np.array([[0, 1.3, 0.2, 5.7, 6.1],    # inside
                  [1, -3.0, -2.0, 4.0, 3.0],  # crossing the top-left border
                  [1, 5.0, 4.0, 12.5, 11.0],  # crossing the bottom-right border
                  [0, 2.0, 2.0, 2.4, 2.2]],   # smaller than a pixel
                 np.float32)


def test_global_lip_pool_zero_logits_is_the_mean_and_large_beta_the_max():
    np.testing.assert_allclose(global_lip_pool(X, jnp.zeros(())), X.mean((1, 2)), rtol=1e-5,
                               atol=1e-6)
    gaps = [float(jnp.max(X.max((1, 2)) - global_lip_pool(X, beta * X)))
            for beta in (1.0, 10.0, 100.0)]
    assert gaps[0] > gaps[1] > gaps[2] >= 0 and gaps[2] < 0.05


@pytest.mark.parametrize("output_size", [(1, 1), (3, 4), (7, 11), (5, 2), (10, 13), (4, 3)])
def test_adaptive_lip_pool_zero_logits_is_torch_adaptive_avg_pool(output_size):
    xt = to_nchw(X).requires_grad_()
    expected = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
    cot = RNG.standard_normal(expected.shape).astype(np.float32)
    expected.backward(torch.tensor(cot))
    out, vjp = jax.vjp(lambda x: adaptive_lip_pool(x, jnp.zeros(x.shape), output_size), X)
    np.testing.assert_allclose(out, to_nhwc(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vjp(cot.transpose(0, 2, 3, 1))[0], to_nhwc(xt.grad), rtol=1e-5,
                               atol=1e-6)


def test_adaptive_lip_pool_large_beta_is_torch_adaptive_max_pool():
    expected = to_nhwc(torch.nn.functional.adaptive_max_pool2d(to_nchw(X), (3, 4)))
    gaps = [float(jnp.max(expected - adaptive_lip_pool(X, beta * X, (3, 4))))
            for beta in (1.0, 10.0, 100.0)]
    assert gaps[0] > gaps[1] > gaps[2] >= 0 and gaps[2] < 0.05


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "not-aligned"])
@pytest.mark.parametrize("sampling_ratio, spatial_scale, output_size",
                         [(1, 1.0, (2, 2)), (2, 0.5, (3, 2)), (3, 1.0, (1, 4))])
def test_roi_lip_pool_zero_logits_is_roi_align(aligned, sampling_ratio, spatial_scale,
                                               output_size):
    """Against torchvision's roi_align where it imports, and always against its NumPy
    statement (checked against torchvision here whenever torchvision is present)."""
    cot = RNG.standard_normal((len(BOXES), *output_size, 3)).astype(np.float32)
    args = (BOXES, output_size, spatial_scale, sampling_ratio, aligned)
    expected = reference.roi_align(FEATURES, *args)
    (expected_grad,) = reference.vjp(reference.roi_align, cot, FEATURES, *args)
    if torchvision_ops is not None:
        ft = to_nchw(FEATURES).requires_grad_()
        theirs = torchvision_ops.roi_align(ft, torch.tensor(BOXES), output_size,
                                           spatial_scale, sampling_ratio, aligned)
        theirs.backward(torch.tensor(cot.transpose(0, 3, 1, 2)))
        np.testing.assert_allclose(expected, to_nhwc(theirs), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(expected_grad, to_nhwc(ft.grad), rtol=1e-5, atol=1e-6)
    pool = lambda f: roi_lip_pool(f, jnp.zeros(f.shape[:-1] + (1,)), BOXES, output_size,
                                  spatial_scale, sampling_ratio, aligned)
    out, vjp = jax.vjp(jax.jit(pool), FEATURES)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vjp(cot)[0], expected_grad, rtol=1e-5, atol=1e-6)


def test_roi_lip_pool_large_beta_is_the_max_over_each_bins_samples():
    """Box (0, 0)-(4, 4) aligned, 2x2 bins, 2x2 samples: the samples are pixels 0..3, so
    each bin's samples are a 2x2 block of pixels."""
    boxes = np.array([[1, 0.0, 0.0, 4.0, 4.0]], np.float32)
    expected = FEATURES[1, :4, :4].reshape(2, 2, 2, 2, 3).max((1, 3))
    gaps = [float(jnp.max(expected - roi_lip_pool(FEATURES, beta * FEATURES, boxes, 2)[0]))
            for beta in (1.0, 10.0, 100.0)]
    assert gaps[0] > gaps[1] > gaps[2] >= 0 and gaps[2] < 0.05


def test_gradients_of_features_and_logits_are_exact_in_float64():
    with jax.enable_x64(True):
        f = jnp.asarray(FEATURES[:, :5, :5], jnp.float64)
        l = jnp.asarray(RNG.standard_normal(f.shape))
        boxes = jnp.asarray(BOXES[:2], jnp.float64)
        for op in (global_lip_pool, functools.partial(adaptive_lip_pool, output_size=(2, 3)),
                   lambda f, l: roi_lip_pool(f, l, boxes, (2, 2), 0.7, 2, True)):
            check_grads(jax.jit(op), (f, l), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_empty_batch_and_no_boxes():
    x = jnp.zeros((0, 5, 4, 3))
    assert global_lip_pool(x, x).shape == (0, 3)
    assert adaptive_lip_pool(x, x, (2, 3)).shape == (0, 2, 3, 3)
    assert roi_lip_pool(FEATURES, FEATURES, np.zeros((0, 5)), (2, 2)).shape == (0, 2, 2, 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="output_size"):
        adaptive_lip_pool(X, X, (2, 2, 2))
    with pytest.raises(ValueError, match=r"boxes of shape \(3, 4\)"):
        roi_lip_pool(FEATURES, FEATURES, np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, 2, sampling_ratio=0)
    with pytest.raises(ValueError, match="sampling_ratio must be an int >= 1, got 1.5"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, 2, sampling_ratio=1.5)
    with pytest.raises(TypeError, match="output_size must be an int or 2 ints, got 2.5"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, 2.5)
    with pytest.raises(ValueError, match=r"output_size must be 2 positive ints, got \(2,\)"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, (2,))
    with pytest.raises(TypeError, match="spatial_scale must be an array, got str"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, 2, spatial_scale="0.5")
    with pytest.raises(TypeError, match="aligned must be a bool, got 'no'"):
        roi_lip_pool(FEATURES, FEATURES, BOXES, 2, aligned="no")
    assert adaptive_lip_pool(X, X, np.int64(2)).shape[1:3] == (2, 2)
    for pool in (global_lip_pool, lambda x, l: adaptive_lip_pool(x, l, 2),
                 lambda x, l: roi_lip_pool(x, l, BOXES[:1], 2)):
        with pytest.raises(ValueError, match=r"logits of shape .* do not broadcast"):
            pool(X, X[..., :2])
        with pytest.raises(TypeError, match="logits must be an array, got NoneType"):
            pool(X, None)
    with pytest.raises(ValueError, match="have no spatial positions"):
        global_lip_pool(X[:, :0], X[:, :0])


@jax.jit
def _pool_and_feature_grad(features, boxes):
    """roi_lip_pool under jit (boxes not concrete) and the gradient of the sum of its
    finite outputs w.r.t. the features."""
    pool = lambda f: roi_lip_pool(f, f, boxes, 2)
    finite_sum = lambda f: jnp.sum(jnp.nan_to_num(pool(f), nan=0.0))
    return pool(features), jax.grad(finite_sum)(features)


@pytest.mark.parametrize("column, value", [(0, 5.0), (0, -1.0), (0, 0.7), (0, np.nan),
                                           (0, np.inf), (3, np.nan), (4, -np.inf)])
def test_a_bad_box_is_named_or_gives_nan_under_jit(column, value):
    boxes = BOXES.copy()
    boxes[2, column] = value
    problem = r"batch index .* 0\.\.1" if column == 0 else "its coordinates must be finite"
    with pytest.raises(ValueError, match=rf"box 2 \(.*\): {problem}"):
        roi_lip_pool(FEATURES, FEATURES, boxes, 2)
    out, grad = _pool_and_feature_grad(FEATURES, boxes)
    assert np.isnan(out[2]).all()
    others = np.delete(boxes, 2, axis=0)
    np.testing.assert_allclose(np.delete(out, 2, axis=0),
                               roi_lip_pool(FEATURES, FEATURES, others, 2), atol=1e-6)
    np.testing.assert_allclose(grad, _pool_and_feature_grad(FEATURES, others)[1], atol=1e-6)


LAYERS = {
    "global": (lambda: L.GlobalLIP(L.ProjectionLogit(zero_init=False)),
               lambda rngs: N.GlobalLIP(N.ProjectionLogit(3, zero_init=False, rngs=rngs)),
               lambda layer, x: layer(x)),
    "adaptive": (lambda: L.AdaptiveLIP(L.ProjectionLogit(1, zero_init=False), (3, 2)),
                 lambda rngs: N.AdaptiveLIP(N.ProjectionLogit(3, 1, zero_init=False,
                                                              rngs=rngs), (3, 2)),
                 lambda layer, x: layer(x)),
    "roi": (lambda: L.RoILIP(L.ProjectionLogit(zero_init=False), (2, 3), 0.5),
            lambda rngs: N.RoILIP(N.ProjectionLogit(3, zero_init=False, rngs=rngs), (2, 3),
                                  0.5),
            lambda layer, x: layer(x, BOXES)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_linen_and_nnx_layers_agree(name):
    make_linen, make_nnx, call = LAYERS[name]
    linen = make_linen()
    params = linen.init(jax.random.key(0), *([FEATURES] + ([BOXES] if name == "roi" else [])))
    graph, state = nnx.split(make_nnx(nnx.Rngs(1)))
    nnx.replace_by_pure_dict(state, params["params"])
    expected = call(functools.partial(linen.apply, params), FEATURES)
    np.testing.assert_allclose(call(nnx.merge(graph, state), FEATURES), expected, rtol=1e-5,
                               atol=1e-6)
