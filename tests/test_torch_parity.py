"""Parity with the official PyTorch formulation, written here (NCHW, autograd)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import linen as L, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def official_lip2d(x, logit, kernel, stride, padding):
    weight = logit.exp()
    return (F.avg_pool2d(x * weight, kernel, stride, padding)
            / F.avg_pool2d(weight, kernel, stride, padding))


CONFIGS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2)]
SIZES = [(7, 7), (8, 8), (15, 15), (9, 12), (1, 1)]


@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
@pytest.mark.parametrize("size", SIZES)
def test_outputs_and_both_gradients_match(kernel, stride, padding, size):
    rng = np.random.default_rng(sum(size) + kernel)
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    logit = (12 / (1 + np.exp(-2 * rng.standard_normal(x.shape)))).astype(np.float32)
    pool = lambda x, l: ops.lip_pool(x, l, (kernel, kernel), (stride, stride),
                                     ((padding, padding), (padding, padding)))
    if min(size) + 2 * padding < kernel:  # both frameworks refuse
        with pytest.raises(RuntimeError):
            official_lip2d(torch.tensor(x), torch.tensor(logit), kernel, stride, padding)
        with pytest.raises(ValueError, match="larger than spatial dim"):
            pool(x.transpose(0, 2, 3, 1), logit.transpose(0, 2, 3, 1))
        return

    xt = torch.tensor(x, requires_grad=True)
    lt = torch.tensor(logit, requires_grad=True)
    yt = official_lip2d(xt, lt, kernel, stride, padding)
    cot = rng.standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.tensor(cot))

    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
    y, vjp = jax.vjp(pool, nhwc(x), nhwc(logit))
    dx, dl = vjp(nhwc(cot))

    to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(to_nchw(y), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_nchw(dx), xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_nchw(dl), lt.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_instance_norm_matches_pytorch_affine_instance_norm():
    rng = np.random.default_rng(0)
    x = (3 + 5 * rng.standard_normal((2, 6, 7, 4))).astype(np.float32)
    scale, bias = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(
        np.float32)
    norm = torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(scale))
        norm.bias.copy_(torch.tensor(bias))
        expected = norm(torch.tensor(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    out = L.InstanceNorm().apply({"params": {"scale": scale, "bias": bias}}, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
