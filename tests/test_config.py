"""Configs: types, values and unknown fields refused at load time, naming the field and
file; a run's config.json as a base; the field table behind `lip-jax train --help`; a
dataset whose files disagree refused at load."""

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lip_jax.data import fashion_mnist
from lip_jax.train.optim import make_schedule
from lip_jax.train.trainer import Trainer
from lip_jax.train.config import (FIELDS, KINDS, default_config, describe_config,
                                  load_config, read_config, record)
from train_helpers import make_fashion_mnist, write_idx

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, message", [
    ("log_every_steps=0", r"config.log_every_steps = 0: must be > 0"),
    ("lr_reference_batch=0", r"config.lr_reference_batch = 0: must be > 0"),
    ("eval_every_epochs=0", r"config.eval_every_epochs = 0.0: must be > 0"),
    ("batch_size=True", r"config.batch_size = True \(from the command line\): must be an "
                        "integer"),
    ("batch_size=64.0", r"config.batch_size = 64.0 .*: must be an integer"),
    ("learning_rate=fast", r"config.learning_rate = 'fast' .*: must be a finite number"),
    ("num_epochs=False", r"config.num_epochs = False .*: must be a finite number"),
    ("num_epochs=1e999", r"config.num_epochs = inf .*: must be a finite number"),
    ("eval_every_epochs=1e999", r"config.eval_every_epochs = inf .*: must be a finite"),
    ("learning_rate=float('nan')", r"config.learning_rate = .*: must be a finite number"),
    ("batch_size=1099511627776", r"config.batch_size = 1099511627776 .*: must be an integer of "
                         r"magnitude below 2\*\*31"),
    ("seed=-1", r"config.seed = -1: must be >= 0"),
    ("decay_epochs=(30, 1e999)", r"config.decay_epochs = \(30, inf\) .*: must be a tuple of "
                                 "finite numbers"),
    ("model_kwargs={'widths': {1, 2}}", r"config.model_kwargs = .*: must be a dict of "
                                        "create_model arguments"),
    ("model_kwargs.widths.a=3", r"config.model_kwargs = .*: must be a dict of create_model "
                                "arguments"),
    ("model_kwargs.widht=(4, 8)", r"config.model_kwargs = \{'widht': \(4, 8\)\}: lip_cnn has "
                                  r"no argument 'widht' \(did you mean 'widths'\?\)"),
    ("model_kwargs.num_classes=0", r"config.model_kwargs sets 'num_classes', which the dataset "
                                   "decides"),
    ("model_kwargs.dtype='float16'", r"config.model_kwargs sets 'dtype', which config.dtype "
                                     "decides"),
    ("coordinator_address=localhost:1234", r"config.distributed = False: "
                                           r"config.coordinator_address is set: set "
                                           r"--config.distributed=True"),
    ("process_id=1", r"config.distributed = False: config.process_id is set"),
    ("distributed=1", r"config.distributed = 1 .*: must be True or False"),
    ("decay_epochs=thirty", r"config.decay_epochs = 'thirty' .*: must be a tuple of finite"),
    ("model_kwargs=3", r"config.model_kwargs = 3 .*: must be a dict"),
    ("bn_group_size=-1", r"config.bn_group_size = -1: must be >= 0"),
    ("bn_group_size=48", r"config.bn_group_size = 48: must divide batch_size \(64\)"),
    ("profile_steps=(5, 2)", r"config.profile_steps = \(5, 2\): must be \(\) \(off\)"),
    ("profile_steps=0", r"config.profile_steps = \(0, 0\)"),
    ("max_steps=0", r"config.max_steps = 0: must be > 0, or -1"),
    ("modle=lip_cnn", r"unknown config field 'modle' in the command line \(did you mean "
                      r"'model'\?\); `lip-jax train --help` lists the fields"),
    ("dtype.kind=1", r"config.dtype has no field 'kind'"),
    ("allow_config_change=True", r"'allow_config_change' in the command line is not a config "
                                 "field: pass --allow-config-change to `lip-jax train`"),
    ("model=lip_resnet5", r"config.model = 'lip_resnet5': unknown model \(did you mean "
                          r"'lip_resnet50'\?\); known: "),
])
def test_bad_values_are_refused_at_load_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [f"--config.{override}"])


@pytest.mark.parametrize("overrides, message", [
    (["coordinator_address=nonsense"], r"config.coordinator_address = 'nonsense': must be "
                                       r'"host:port"'),
    (["coordinator_address=host:99999"], r"must be \"host:port\" with a port in 1..65535"),
    (["coordinator_address=host:1", "num_processes=2", "process_id=2"],
     r"config.process_id = 2: must be below config.num_processes \(2\)"),
    (["coordinator_address=host:1"], r"config.coordinator_address needs "
                                     "config.num_processes and config.process_id"),
    (["num_processes=0"], r"config.num_processes = 0: must be > 0, or -1"),
    (["initialization_timeout=0"], r"config.initialization_timeout = 0: must be > 0 seconds"),
], ids=["garbage address", "port out of range", "process_id beyond the count",
        "address without ids", "no processes", "no time to join"])
def test_cluster_settings_are_checked_together(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["--config.distributed=True",
                           *(f"--config.{o}" for o in overrides)])


def test_values_are_converted_to_the_field_type():
    config = load_config(None, [
        "--config.num_epochs=2", "--config.decay_epochs=[10, 20.5]", "--config.data_dir=2024",
        "--config.profile_steps=7", "--config.distributed=true", "--config.init_from='a b'",
        "--config.model_kwargs.widths=(4, 8)"])
    assert config.num_epochs == 2.0 and isinstance(config.num_epochs, float)
    assert config.decay_epochs == (10, 20.5)
    assert config.data_dir == "2024" and config.init_from == "a b"
    assert config.profile_steps == (7, 7) and config.distributed is True
    assert config.model_kwargs.to_dict() == {"widths": (4, 8)}


def _write(path: Path, body: str) -> str:
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_unknown_field_in_a_config_file_names_the_file(tmp_path):
    path = _write(tmp_path / "extra.py", """
        from lip_jax.train.config import default_config
        def get_config():
            c = default_config()
            c.batch = 32
            return c
        """)
    with pytest.raises(ValueError, match=rf"unknown config field 'batch' in {path} \(did you "
                                         r"mean 'batch_size'\?\)"):
        load_config(path, [])


def test_wrong_type_in_a_config_file_names_the_file(tmp_path):
    path = _write(tmp_path / "typed.py", """
        def get_config():
            return {"eval_batch_size": True}
        """)
    with pytest.raises(ValueError, match=rf"config.eval_batch_size = True \(from {path}\)"):
        load_config(path, [])


def test_config_file_without_get_config_is_named(tmp_path):
    path = _write(tmp_path / "empty.py", "x = 1\n")
    with pytest.raises(ValueError, match=f"config file {path} defines no get_config"):
        load_config(path, [])


def test_base_then_file_then_overrides(tmp_path):
    run = load_config(None, ["--config.model=cnn", "--config.batch_size=32",
                             "--config.model_kwargs={'widths': (4, 8)}",
                             "--config.profile_steps=(2, 3)", "--config.decay_epochs=(5,)"])
    base = tmp_path / "config.json"
    base.write_text(run.to_json(indent=1))  # as the training loop writes it
    assert read_config(base).to_dict() == run.to_dict()  # tuples survive JSON
    path = _write(tmp_path / "file.py", """
        def get_config():
            return {"batch_size": 16}
        """)
    config = load_config(path, ["--config.seed=3"], base=str(base))
    assert (config.model, config.batch_size, config.seed) == ("cnn", 16, 3)
    assert config.model_kwargs.to_dict() == {"widths": (4, 8)}


def test_unknown_field_in_a_base_config_json_names_it(tmp_path):
    base = tmp_path / "config.json"
    base.write_text('{"model": "cnn", "bn_groups": 2}')
    with pytest.raises(ValueError, match=rf"'bn_groups' in {base} \(did you mean "
                                         r"'bn_group_size'\?\)"):
        load_config(None, [], base=str(base))


def test_describe_config_lists_every_field_under_its_kind_with_default_and_meaning():
    lines = describe_config().splitlines()
    headings = [line for line in lines if not line.startswith(" ")]
    assert [h.split(":")[0] for h in headings] == list(KINDS)
    fields = [line for line in lines if line.startswith(" ")]
    assert sorted(line.split()[0] for line in fields) == sorted(default_config())
    for name, default, kind, meaning in FIELDS:
        line = next(line for line in fields if line.split()[0] == name)
        assert line.split(None, 1)[1].startswith(repr(default)) and line.endswith(meaning)
        above = [h for h in headings if lines.index(h) < lines.index(line)]
        assert above[-1] == f"{kind}: {KINDS[kind]}", name
    assert max(len(line) for line in lines) <= 100


def test_a_config_json_holds_the_record_and_gives_no_launch_settings(tmp_path):
    config = load_config(None, ["--config.distributed=True", "--config.seed=4",
                                "--config.coordinator_address=host:1234",
                                "--config.num_processes=2", "--config.process_id=1"])
    base = tmp_path / "config.json"
    base.write_text(record(config, [{"step": 3, "field": "seed", "old": 1, "new": 4}]))
    written = json.loads(base.read_text())
    assert "process_id" not in written and written["changes"][0]["new"] == 4
    again = read_config(base)
    assert again.seed == 4 and again.distributed is False and again.process_id == -1


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "holds a JSON list, not a config.json object"),
    ("{garbage", "is not a config.json"),
    ('{"seed": "zero"}', r"config.seed = 'zero' \(from .*config.json\): must be an integer"),
    ('{"changes": 3}', "'changes' must be a list"),
])
def test_a_hand_edited_config_json_is_named(tmp_path, text, message):
    base = tmp_path / "config.json"
    base.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config(base)


def test_a_config_file_that_fails_or_is_no_python_is_named(tmp_path):
    path = _write(tmp_path / "broken.py", "def get_config():\n    return 1 / 0\n")
    with pytest.raises(ValueError, match=f"config file {path} fails: ZeroDivisionError"):
        load_config(path, [])
    path = _write(tmp_path / "settings.txt", "batch_size = 3\n")
    with pytest.raises(ValueError, match=f"config file {path} is not a Python file"):
        load_config(path, [])


def test_paper_recipes_use_groups_of_32_images_and_the_default_job_the_whole_batch():
    for path in sorted((ROOT / "experiments/configs").glob("imagenet_*.py")):
        config = load_config(str(path), [])
        assert config.bn_group_size == 32 and config.batch_size % 32 == 0, path
    assert load_config(str(ROOT / "experiments/configs/fashion_mnist.py"), []).bn_group_size == 0


def test_fashion_mnist_images_and_labels_that_disagree_in_count_name_both_files(tmp_path):
    make_fashion_mnist(tmp_path, num_train=32, num_test=8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 8 images but "
                                         r".*t10k-labels-idx1-ubyte.gz holds 7 labels"):
        fashion_mnist.load("test", str(tmp_path))


def test_step_schedule_decays_once_per_listed_epoch_like_multisteplr():
    """An epoch listed twice, or two epochs on one step, decay twice (PyTorch's MultiStepLR
    counts milestones); a dict of step boundaries used to keep one of them."""
    config = load_config(None, ["--config.schedule=step", "--config.decay_epochs=(2, 1, 2)",
                                "--config.decay_factor=0.1", "--config.learning_rate=0.1",
                                "--config.batch_size=256", "--config.lr_reference_batch=256"])
    schedule = make_schedule(config, steps_per_epoch=10, total_steps=100)
    np.testing.assert_allclose([schedule(s) for s in (0, 9, 10, 19, 20, 99)],
                               [0.1, 0.1, 0.01, 0.01, 1e-4, 1e-4], rtol=1e-6)
    config.decay_epochs = (1.0, 1.01)  # both on step 10
    schedule = make_schedule(config, steps_per_epoch=10, total_steps=100)
    np.testing.assert_allclose([schedule(9), schedule(10)], [0.1, 1e-3], rtol=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "config.batch_size = 0: must be > 0"),
    ("learning_rate", float("nan"), "config.learning_rate = nan: must be > 0"),
])
def test_the_python_api_checks_the_config_as_the_command_line_does(field, value, message):
    """train_and_evaluate(config, ...) on an unchecked config raised ZeroDivisionError, or
    trained a step on a NaN learning rate (and left a work directory)."""
    config = default_config()
    config[field] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        Trainer(config)
