"""Transfer learning: `init_from` 1000-class weights (converted or a lip-jax work directory)
into a 10-class model re-initialises exactly the classifier and names it; any other
mismatch is an error that names the variable."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import checksums, convert, pretrained
from lip_jax.models import create_model
from lip_jax.train import loop
from lip_jax.train.trainer import load_init_from
from train_helpers import make_fashion_mnist, tiny_config

TINY = dict(widths=(4, 8), convs_per_stage=(1, 1))  # train_helpers' tiny lip_cnn
FC = ["['params']['fc']['bias']", "['params']['fc']['kernel']"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """Weights of a 1000-class tiny lip_cnn, every value shifted by 0.5 (unlike any init)."""
    model = create_model("lip_cnn", num_classes=1000, **TINY)
    variables = jax.device_get(model.init(jax.random.key(7), jnp.zeros((1, 28, 28, 1))))
    variables = jax.tree.map(lambda v: v + 0.5, variables)
    directory = tmp_path_factory.mktemp("weights")
    pretrained.save_variables(directory, "lip_cnn", variables)
    return directory, variables


def _variables(state):
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def test_classifier_is_every_variable_that_depends_on_num_classes():
    for name, kw, head in (("lip_cnn", TINY, "fc"),
                           ("resnet18", dict(width=8, stage_sizes=(1, 1, 1, 1)), "fc"),
                           ("densenet121", dict(growth_rate=4, init_features=8,
                                                block_sizes=(1, 1)), "classifier")):
        model = create_model(name, num_classes=10, **kw)
        assert pretrained.classifier_paths(model, (32, 32, 3)) == {
            f"['params']['{head}']['bias']", f"['params']['{head}']['kernel']"}


def test_fine_tuning_re_initialises_exactly_the_classifier_and_trains(data_dir, imagenet_like,
                                                                      tmp_path, caplog):
    weights, saved = imagenet_like
    fresh = _variables(loop.Trainer(tiny_config(data_dir)).init_state())
    config = tiny_config(data_dir, init_from=str(weights), max_steps=2)
    with caplog.at_level(logging.INFO, logger="lip_jax"):
        started = _variables(loop.Trainer(config).init_state())
    assert f"re-initialised the classifier (another num_classes): {', '.join(FC)}" in caplog.text
    for path, value in jax.tree_util.tree_leaves_with_path(started):
        expected = fresh if jax.tree_util.keystr(path) in FC else saved
        np.testing.assert_array_equal(value, _get(expected, path))
    assert started["params"]["fc"]["kernel"].shape == (8, 10)

    result = loop.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["eval_loss"])


def test_init_from_a_training_work_directory_reads_its_newest_checkpoint(data_dir, tmp_path):
    run = tiny_config(data_dir, max_steps=3)
    loop.train_and_evaluate(run, tmp_path / "run")
    trained = _variables(loop.latest_state(run, tmp_path / "run")[1])
    loaded = load_init_from(str(tmp_path / "run"), "lip_cnn")
    jax.tree.map(np.testing.assert_array_equal, loaded, trained)
    with pytest.raises(ValueError, match="holds weights of 'lip_cnn', not 'cnn'"):
        load_init_from(str(tmp_path / "run"), "cnn")
    started = loop.Trainer(tiny_config(data_dir, init_from=str(tmp_path / "run"))).init_state()
    assert int(started.step) == 0  # weights only: a fresh optimizer and schedule
    jax.tree.map(np.testing.assert_array_equal, _variables(started), trained)


def test_any_other_mismatch_is_named(data_dir, imagenet_like):
    weights, _ = imagenet_like
    wider = tiny_config(data_dir, init_from=str(weights),
                        model_kwargs={"widths": (4, 16), "convs_per_stage": (1, 1)})
    with pytest.raises(ValueError, match=r"do not fit the model .*\['params'\]\['conv1_0'\]"
                                         r"\['kernel'\]: \(3, 3, 4, 8\) vs the model's "
                                         r"\(3, 3, 4, 16\)"):
        loop.Trainer(wider).init_state()
    deeper = tiny_config(data_dir, init_from=str(weights),
                         model_kwargs={"widths": (4, 8), "convs_per_stage": (1, 2)})
    with pytest.raises(ValueError, match=r"\['params'\]\['conv1_1'\]\['kernel'\]: missing"):
        loop.Trainer(deeper).init_state()
    with pytest.raises(ValueError, match="holds weights of 'lip_cnn', not 'cnn'"):
        loop.Trainer(tiny_config(data_dir, init_from=str(weights), model="cnn")).init_state()


def test_init_from_a_directory_without_weights_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither converted weights .* nor a training "
                                                "run"):
        load_init_from(str(tmp_path), "lip_cnn")


def test_weights_without_checksums_are_refused(imagenet_like, tmp_path):
    weights = shutil.copytree(imagenet_like[0], tmp_path / "weights")
    (weights / "variables" / checksums.FILE).unlink()
    with pytest.raises(ValueError, match=r"weights in .*variables are damaged: "
                                         r"checksums.json is missing"):
        pretrained.load_variables(weights)


def test_checksums_of_a_missing_directory_are_named(tmp_path):
    assert checksums.mismatch(tmp_path / "gone") == f"{tmp_path / 'gone'} is not a directory"
    with pytest.raises(FileNotFoundError, match="checksums of .*gone: no such directory"):
        checksums.write(tmp_path / "gone")


@pytest.mark.parametrize("content", ['{"model": null}', '{"model": ["lip_cnn"]}'])
def test_a_model_json_without_a_model_name_is_named(imagenet_like, tmp_path, content):
    weights = shutil.copytree(imagenet_like[0], tmp_path / "weights")
    (weights / "model.json").write_text(content)
    with pytest.raises(ValueError, match=r"model.json names the model .*, expected a model "
                                         "name"):
        pretrained.load_variables(weights, "lip_cnn")


@pytest.mark.parametrize("value, message", [
    (np.ones(3, np.int64), r"key \['params'\]\['w'\] of src has dtype int64"),
    (np.array([1.0, np.nan, np.inf]), r"key \['params'\]\['w'\] of src holds 2 NaN or "
                                      "infinite values"),
])
def test_fit_variables_refuses_values_that_are_not_finite_floats(value, message):
    fresh = {"params": {"w": np.zeros(3, np.float32)}}
    with pytest.raises(convert.CheckpointError, match=message):
        pretrained.fit_variables({"params": {"w": value}}, fresh, set(), "src")


def test_fit_variables_casts_to_the_models_dtypes():
    fresh = {"params": {"w": jnp.zeros(3, jnp.bfloat16)}}
    fitted, _ = pretrained.fit_variables({"params": {"w": np.full(3, 1.5)}}, fresh, set(),
                                         "src")
    assert fitted["params"]["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(fitted["params"]["w"], np.float32), 1.5)


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree
