"""The options users bring from PyTorch and antialiased-cnns: `ceil_mode` on every windowed
op, `count_include_pad` on `average_pool`, `padding_mode` on `blur_pool`, integer logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lip_jax
from lip_jax import ops
from lip_jax.blur import binomial_filter

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _nchw(x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


X = np.random.RandomState(0).randn(2, 7, 6, 3).astype(np.float32)
GEOMETRIES = [(3, 2, 1), (3, 2, 0), (2, 2, 0), (3, 3, 1), (4, 3, 2), (5, 2, 2)]  # k, s, p


@pytest.mark.parametrize("k, s, p", GEOMETRIES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_average_pool_equals_torch_avg_pool2d(k, s, p, ceil_mode, count_include_pad):
    ours = ops.average_pool(X, (k, k), (s, s), ((p, p), (p, p)), ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad)
    theirs = F.avg_pool2d(_nchw(X), k, s, p, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad)
    np.testing.assert_allclose(ours, _nhwc(theirs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k, s, p", GEOMETRIES)
def test_ceil_mode_gives_torchs_output_sizes_and_max_pools_limit(k, s, p):
    """Max pooling as the limit of LIP (logits beta * x), ceil_mode as torch's."""
    ours = ops.tempered_max_pool(X, (k, k), (s, s), ((p, p), (p, p)), beta=1e4,
                                 ceil_mode=True)
    theirs = _nhwc(F.max_pool2d(_nchw(X), k, s, p, ceil_mode=True))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_ceil_mode_keeps_the_lan_identity_with_zero_logits():
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    for pool in (lambda x: ops.lip_pool(x, jnp.zeros_like(x), *args, ceil_mode=True),
                 lambda x: ops.lan_pool(x, jnp.ones_like(x), *args, ceil_mode=True),
                 lambda x: lip_jax.dpp_pool(x, 0.0, 0.0, *args, ceil_mode=True)):
        np.testing.assert_allclose(pool(X), ops.average_pool(X, *args, ceil_mode=True),
                                   rtol=1e-6, atol=1e-6)
    share = ops.window_share(jnp.zeros_like(X), *args, ceil_mode=True)
    assert share.shape == X.shape and bool(jnp.all(share > 0))


def test_ceil_mode_on_the_kernels_matches_the_xla_graph():
    logits = 3 * jnp.asarray(np.random.RandomState(1).randn(*X.shape), jnp.float32)
    args = ((3, 3), (2, 2), "VALID")
    want = ops.lip_pool(X, logits, *args, ceil_mode=True, implementation="xla")
    for kernel in ("pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu"):
        got = ops.lip_pool(X, logits, *args, ceil_mode=True, implementation=kernel)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_blur_pool_padding_modes_equal_antialiased_cnns(mode, k):
    """antialiased-cnns' BlurPool: pad ((k - 1) // 2, k // 2) with the mode, then a
    depthwise conv with the normalised binomial filter at stride 2."""
    pads = ((k - 1) // 2, k // 2)
    ours = lip_jax.blur_pool(X, (k, k), (2, 2), (pads, pads), padding_mode=mode)
    padded = F.pad(_nchw(X), (*pads, *pads), mode={"zeros": "constant"}.get(mode, mode))
    filt = torch.from_numpy(binomial_filter((k, k)).reshape(k, k).astype(np.float32))
    filt = (filt / filt.sum())[None, None].repeat(X.shape[-1], 1, 1, 1)
    theirs = F.conv2d(padded, filt, stride=2, groups=X.shape[-1])
    np.testing.assert_allclose(ours, _nhwc(theirs), rtol=1e-5, atol=1e-6)


def test_blur_pool_modes_agree_in_the_interior_and_exclude_renormalises():
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    outs = {m: lip_jax.blur_pool(X, *args, padding_mode=m)
            for m in ("exclude", "zeros", "reflect", "replicate")}
    for out in outs.values():
        np.testing.assert_allclose(out[:, 1:-1, 1:-1], outs["exclude"][:, 1:-1, 1:-1],
                                   rtol=1e-6)
    ones = jnp.ones((1, 5, 5, 1))
    np.testing.assert_allclose(lip_jax.blur_pool(ones, *args), 1.0, rtol=1e-6)
    assert float(lip_jax.blur_pool(ones, *args, padding_mode="zeros")[0, 0, 0, 0]) < 1


def test_blur_pool_refuses_a_reflection_longer_than_the_input_and_unknown_modes():
    with pytest.raises(ValueError, match="reflect padding"):
        lip_jax.blur_pool(jnp.ones((1, 2, 3, 1)), (3, 3), (1, 1), ((2, 2), (0, 0)),
                          padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        lip_jax.blur_pool(X, (3, 3), padding_mode="circular")


def test_integer_logits_and_weights_are_taken_as_floats():
    logits = np.random.RandomState(2).randint(-3, 4, X.shape)
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_allclose(ops.lip_pool(X, logits, *args),
                               ops.lip_pool(X, logits.astype(np.float32), *args), rtol=1e-6)
    np.testing.assert_allclose(ops.lan_pool(X, X > 0, *args[:2], "SAME"),
                               ops.lan_pool(X, (X > 0).astype(np.float32), *args[:2], "SAME"))
    grad = jax.grad(lambda x: ops.lip_pool(x, jnp.asarray(logits), *args).sum())(X)
    assert grad.dtype == jnp.float32
