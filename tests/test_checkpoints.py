"""Checkpoints that are damaged or not checkpoints at all: checksums find every changed
byte, stray entries never block a resume, and training, eval and init_from fall back to the
newest intact checkpoint; nothing is ever deleted."""

import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from lip_jax import checksums, pretrained
from lip_jax.train import loop
from lip_jax.train.checkpoint import Checkpoints
from lip_jax.train.steps import TrainState
from lip_jax.train.trainer import load_init_from
from train_helpers import checkpoint_steps, final_params, make_fashion_mnist, tiny_config


def _state(step: int) -> TrainState:
    return TrainState(step=jnp.array(step, jnp.int32), params={"w": jnp.full((4, 3), step, float)},
                      batch_stats={"m": jnp.full((3,), -step, float)},
                      opt_state={"mu": jnp.arange(3.0) + step})


def _abstract():
    device = SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        _state(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint directory holding steps 1 and 2, as training writes them."""
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    checkpoints = Checkpoints(directory, keep=3)
    for step in (1, 2):
        checkpoints.save(_state(step))
    checkpoints.close()
    return directory


def _copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "checkpoints")


def _restored_step(directory, keep=None) -> int:
    checkpoints = Checkpoints(directory, keep=keep)
    state = checkpoints.restore_latest(_abstract())
    checkpoints.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state),
                 jax.device_get(_state(int(state.step))))
    return int(state.step)


def test_every_save_gets_checksums_of_every_file(saved):
    for step in ("1", "2"):
        assert checksums.written(saved / step) and checksums.mismatch(saved / step) is None


def test_single_bit_flips_anywhere_are_found_and_the_older_checkpoint_restored(saved,
                                                                              tmp_path):
    files = sorted(p for p in (saved / "2").rglob("*") if p.is_file()
                   and p.name != checksums.FILE)
    rng = random.Random(0)
    for trial in range(24):
        directory = shutil.copytree(saved, tmp_path / str(trial) / "checkpoints")
        path = directory / "2" / files[trial % len(files)].relative_to(saved / "2")
        data = bytearray(path.read_bytes())
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        assert _restored_step(directory) == 1, (path, position)  # read-only: eval
        assert (directory / "2").is_dir()  # read-only renames nothing
    assert _restored_step(directory, keep=3) == 1  # training sets it aside
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2.corrupt-1"]


@pytest.mark.parametrize("make", [
    lambda d: (d / "99").mkdir(),
    lambda d: shutil.rmtree(shutil.copytree(d / "2", d / "7") / "default"),
    lambda d: (d / "5").write_text("a file named like a step"),
], ids=["an empty step directory", "a step without its item", "a file"])
def test_stray_entries_are_set_aside_and_never_block_a_resume(saved, tmp_path, make):
    directory = _copy(saved, tmp_path)
    make(directory)
    stray = next(p.name for p in directory.iterdir() if p.name not in ("1", "2"))
    assert _restored_step(directory) == 2  # read-only: skipped
    assert _restored_step(directory, keep=3) == 2
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", f"{stray}.stray-1"]


def test_a_checkpoint_that_vanishes_while_read_is_replaced_by_the_newer_one(saved, tmp_path):
    """As when evaluating beside a trainer that keeps one checkpoint: it saves step 3 and
    removes step 2 while step 2 is read."""
    directory = _copy(saved, tmp_path)
    reads = []

    def read(path):
        reads.append(path.parent.name)
        if len(reads) == 1:
            shutil.copytree(directory / "2", directory / "3")
            shutil.rmtree(directory / "2")
        return np.load(path / "missing") if not path.exists() else path.parent.name

    assert Checkpoints(directory).newest(read) == (3, "3")
    assert reads == ["2", "3"]


def test_nothing_restoring_is_named_step_by_step(saved, tmp_path):
    directory = _copy(saved, tmp_path)
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct((7,), s.dtype, sharding=s.sharding),
                            _abstract())  # another model
    with pytest.raises(ValueError, match=r"no checkpoint in .* restores: step 2: .*; step 1: "):
        Checkpoints(directory, keep=3).restore_latest(abstract)
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]  # nothing set aside


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config(data_dir, max_steps=2, checkpoint_every_secs=1e-9)
    loop.train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [1, 2]
    return data_dir, workdir, config


def _flip_a_bit(step_directory):
    """In the largest file of the checkpoint (its data, not its checksums)."""
    path = max((p for p in step_directory.rglob("*")
                if p.is_file() and p.name != checksums.FILE), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 4
    path.write_bytes(bytes(data))


def test_eval_init_from_and_training_fall_back_to_the_newest_intact_checkpoint(trained,
                                                                               tmp_path):
    data_dir, original, config = trained
    intact = final_params(original, data_dir)
    workdir = shutil.copytree(original, tmp_path / "run")
    _flip_a_bit(workdir / "checkpoints" / "2")
    assert loop.evaluate_checkpoint(config, workdir)["step"] == 1
    variables = load_init_from(str(workdir), config.model)
    one = final_params(shutil.copytree(original, tmp_path / "one", ignore=lambda d, names: (
        ["2"] if d.endswith("checkpoints") else [])), data_dir)
    jax.tree.map(np.testing.assert_array_equal, variables["params"], one.params)
    assert checkpoint_steps(workdir) == [1, 2]  # reading renames nothing

    loop.train_and_evaluate(config, workdir)  # sets step 2 aside, trains it again
    assert (workdir / "checkpoints" / "2.corrupt-1").is_dir()
    jax.tree.map(np.testing.assert_array_equal, intact, final_params(workdir, data_dir))


def test_converted_weights_with_changed_bytes_are_refused(tmp_path):
    variables = {"params": {"w": np.ones((3, 2), np.float32)},
                 "batch_stats": {"m": np.zeros(2, np.float32)}}
    pretrained.save_variables(tmp_path / "weights", "lip_cnn", variables)
    jax.tree.map(np.testing.assert_array_equal, variables,
                 pretrained.load_variables(tmp_path / "weights", "lip_cnn"))
    _flip_a_bit(tmp_path / "weights" / "variables")
    with pytest.raises(ValueError, match=r"weights in .* are damaged: .* has other bytes"):
        pretrained.load_variables(tmp_path / "weights")
