"""BatchNorm: whole-batch and per-group statistics against NumPy, and no communication
for groups that lie within one device."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lip_jax.linen.batch_norm import BatchNorm
from lip_jax.nnx.batch_norm import BatchNorm as NNXBatchNorm

EPS, MOMENTUM = 1e-5, 0.9


def numpy_batch_norm(x, scale, bias, mean, var, group):
    """Each group of `group` consecutive examples normalised with its own mean and biased
    variance; running statistics moved towards the group average of means and unbiased
    variances. Returns (y, new running mean, new running var)."""
    x = np.asarray(x, np.float64)
    groups = x.reshape(-1, group * int(np.prod(x.shape[1:-1])), x.shape[-1])
    count = groups.shape[1]
    y, means, unbiased = [], [], []
    for g in groups:
        m, v = g.mean(0), g.var(0)
        y.append((g - m) / np.sqrt(v + EPS) * scale + bias)
        means.append(m)
        unbiased.append(v * count / (count - 1))
    return (np.reshape(y, x.shape),
            MOMENTUM * mean + (1 - MOMENTUM) * np.mean(means, 0),
            MOMENTUM * var + (1 - MOMENTUM) * np.mean(unbiased, 0))


def _variables(features, seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"scale": rng.uniform(0.5, 2, features).astype(np.float32),
                       "bias": rng.normal(size=features).astype(np.float32)},
            "batch_stats": {"mean": rng.normal(size=features).astype(np.float32),
                            "var": rng.uniform(0.5, 2, features).astype(np.float32)}}


def _train(group_size, variables, x):
    return BatchNorm(use_running_average=False, group_size=group_size).apply(
        variables, x, mutable=["batch_stats"])


@pytest.mark.parametrize("group_size, group", [(0, 12), (12, 12), (4, 4), (3, 3), (1, 1)])
def test_per_group_statistics_and_outputs_equal_numpy(group_size, group):
    x = np.random.default_rng(1).normal(2.0, 3.0, (12, 3, 2, 5)).astype(np.float32)
    variables = _variables(5)
    y, updates = _train(group_size, variables, x)
    expected = numpy_batch_norm(x, *variables["params"].values(),
                                *variables["batch_stats"].values(), group)
    np.testing.assert_allclose(y, expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], expected[1], rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], expected[2], rtol=1e-5)


def test_group_of_the_whole_batch_is_the_global_mode():
    x = np.random.default_rng(2).normal(size=(8, 4, 4, 3)).astype(np.float32)
    variables = _variables(3)
    jax.tree.map(np.testing.assert_array_equal, _train(0, variables, x), _train(8, variables, x))


def test_groups_differ_from_the_global_mode():
    x = np.random.default_rng(3).normal(size=(8, 2, 2, 3)).astype(np.float32)
    x[4:] += 5.0  # the second group of 4 has another mean
    y_global, _ = _train(0, _variables(3), x)
    y_groups, _ = _train(4, _variables(3), x)
    assert not np.allclose(y_global, y_groups, atol=1e-2)


def test_eval_mode_uses_the_running_statistics_whatever_the_group_size():
    x = np.random.default_rng(4).normal(size=(6, 2, 2, 3)).astype(np.float32)
    variables = _variables(3)
    outputs = [BatchNorm(use_running_average=True, group_size=g).apply(variables, x)
               for g in (0, 4)]  # 4 does not divide 6: groups play no part in eval
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("group_size", [5, -2])
def test_batch_not_divisible_by_the_group_size_is_named(group_size):
    x = jnp.ones((12, 2, 2, 3))
    with pytest.raises(ValueError, match=rf"group_size {group_size} must be >= 0 and divide "
                                         r"the batch of 12 examples"):
        _train(group_size, _variables(3), x)


@pytest.mark.parametrize("x, group_size, match", [
    (jnp.ones((1, 1, 1, 3)), 0, r"shape \(1, 1, 1, 3\) in train mode give 1 value per "
     r"channel per group of 1 examples"),
    (jnp.ones((4, 1, 1, 3)), 1, "give 1 value per channel per group of 1 examples"),
    (jnp.ones((0, 2, 2, 3)), 0, r"an empty batch \(inputs of shape \(0, 2, 2, 3\)\)"),
])
def test_inputs_without_batch_statistics_are_named(x, group_size, match):
    """One value per channel (PyTorch refuses it) pulled the running variance towards 0;
    an empty batch raised ZeroDivisionError."""
    with pytest.raises(ValueError, match=match):
        _train(group_size, _variables(3), x)


@pytest.mark.parametrize("shape", [(4, 2, 2, 5), ()])
def test_nnx_inputs_of_another_channel_count_or_rank_are_named(shape):
    """They failed with a broadcasting error or an IndexError (Linen's variables are made
    to fit the inputs, and given ones of another size are named by flax)."""
    with pytest.raises(ValueError, match=re.escape(f"inputs of shape {shape}: expected "
                                                   "(N, ..., 3)")):
        NNXBatchNorm(3, rngs=nnx.Rngs(0))(jnp.ones(shape))


@pytest.mark.parametrize("momentum", [5.0, -0.1, float("nan")])
def test_momentum_outside_the_unit_interval_is_named(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        BatchNorm(use_running_average=False, momentum=momentum).apply(
            _variables(3), jnp.ones((4, 3)), mutable=["batch_stats"])


def _sharded(fn):
    """`fn(variables, x)` jitted with `x` sharded on "data" over 8 devices."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))


def _collectives(group_size, x):
    """Cross-device operations in the compiled normalisation (the output only: the running
    statistics, one vector per layer averaged over groups, are left out)."""
    fn = _sharded(lambda v, x: _train(group_size, v, x)[0])
    hlo = fn.lower(_variables(x.shape[-1]), x).compile().as_text()
    return re.findall(r"all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter",
                      hlo)


def test_groups_within_one_device_need_no_communication():
    assert jax.device_count() == 8
    x = jnp.ones((64, 4, 4, 16))  # 8 examples per device
    assert _collectives(8, x) == [] and _collectives(4, x) == []
    assert "all-reduce" in _collectives(0, x)  # global statistics do communicate


@pytest.mark.parametrize("group_size", [0, 4, 8, 16])  # 16: a group spans two devices
def test_sharded_statistics_equal_numpy(group_size):
    x = np.random.default_rng(5).normal(1.0, 2.0, (64, 2, 2, 3)).astype(np.float32)
    variables = _variables(3)
    y, updates = _sharded(lambda v, x: _train(group_size, v, x))(variables, x)
    expected = numpy_batch_norm(x, *variables["params"].values(),
                                *variables["batch_stats"].values(), group_size or 64)
    np.testing.assert_allclose(y, expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], expected[1], rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], expected[2], rtol=1e-5)


def test_groups_train_like_ddp_ranks_each_with_plain_batch_norm():
    """Loss and gradients (inputs, scale, bias) of G-groups equal those of N / G separate
    whole-batch BatchNorms, one per group, as DDP ranks compute them; the running
    statistics are the average of the ranks' running statistics."""
    x = np.random.default_rng(6).normal(size=(12, 3, 3, 4)).astype(np.float32)
    variables = _variables(4)
    target = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)

    def loss(params, x, target, group_size):
        y, updates = _train(group_size, {**variables, "params": params}, x)
        return jnp.sum((y - target) ** 2), updates["batch_stats"]

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=3)
    (params_grad, x_grad), stats = grad(variables["params"], x, target, 4)
    ranks = [grad(variables["params"], x[r:r + 4], target[r:r + 4], 0) for r in (0, 4, 8)]
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jax.tree.map(close, params_grad, jax.tree.map(lambda *g: sum(g), *[g for (g, _), _ in ranks]))
    close(x_grad, np.concatenate([g for (_, g), _ in ranks]))
    jax.tree.map(lambda a, *r: close(a, np.mean(r, 0)), stats, *[s for _, s in ranks])
