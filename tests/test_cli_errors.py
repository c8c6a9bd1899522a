"""The command line as a newcomer meets it: one-line errors, help, rounded tables, exit codes."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import cli
from lip_jax.models import create_model
from lip_jax.train import loop, steps
from lip_jax.train.config import describe_config
from train_helpers import make_fashion_mnist, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    """`python -m lip_jax args...` from the repository root -> (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "lip_jax", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def user_error(capsys, *args) -> str:
    """Runs `lip-jax args...`, checks that it is refused with status 2 and one line, and
    returns that line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in args])
    assert exit_.value.code == cli.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.startswith("lip-jax: error: ") and err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize("overrides, message", [
    (["--config.modle=cnn"], "unknown config field 'modle'"),
    (["--config.batch_size=-3"], "config.batch_size = -3: must be > 0"),
    (["--config.data_dir=/nonexistent/fashion", "--config.eval_batch_size=40"],
     "Fashion-MNIST not found"),
])
def test_train_user_errors_are_one_line_and_leave_no_directory(tmp_path, capsys, overrides,
                                                               message):
    workdir = tmp_path / "run"
    assert message in user_error(capsys, "train", "--workdir", workdir, *overrides)
    assert not workdir.exists()


def test_config_fields_and_model_names_get_suggestions(tmp_path, capsys):
    line = user_error(capsys, "train", "--workdir", tmp_path / "run", "--config.modle=cnn")
    assert "did you mean 'model'" in line
    line = user_error(capsys, "train", "--workdir", tmp_path / "run",
                      "--config.model=lip_resnet5")
    assert "did you mean" in line and "lip_resnet50" in line


def test_a_non_finite_loss_stops_with_one_line(tmp_path, capsys):
    overrides = tiny_overrides(make_fashion_mnist(tmp_path / "data"), max_steps=3,
                               learning_rate=1e30)
    line = user_error(capsys, "train", "--workdir", tmp_path / "run", *overrides)
    assert "at step 2" in line


def test_eval_of_a_mistyped_workdir_is_one_line_and_creates_nothing(tmp_path, capsys):
    workdir = tmp_path / "rnu"
    assert "no checkpoint" in user_error(capsys, "eval", "--workdir", workdir,
                                         "--config.eval_batch_size=40")
    assert not workdir.exists()


def test_convert_user_errors(tmp_path, capsys):
    line = user_error(capsys, "convert", tmp_path / "missing.pth", "--model", "lip_resnet50",
                      "--out", tmp_path / "out")
    assert "No such file or directory" in line and "missing.pth" in line
    pytest.importorskip("torch").save([1, 2], tmp_path / "list.pth")
    line = user_error(capsys, "convert", tmp_path / "list.pth", "--model", "lip_resnet50",
                      "--out", tmp_path / "out")
    assert "a checkpoint holding a list, not a state_dict" in line
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback_and_quiet_does_not(tmp_path):
    status, _, err = run_cli("train", "--workdir", tmp_path / "run", "--config.batch_size=0")
    assert status == 2 and err == "lip-jax: error: config.batch_size = 0: must be > 0\n"
    status, _, err = run_cli("train", "--verbose", "--workdir", tmp_path / "run",
                             "--config.batch_size=0")
    assert status == 1 and "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("config.batch_size = 0: must be > 0")


def test_a_run_logs_its_progress_and_ends_with_a_table(tmp_path):
    """As a program (no pytest logging), status lines reach stderr: the root logger is set
    up before any library configures it."""
    data = make_fashion_mnist(tmp_path / "data")
    status, out, err = run_cli("train", "--workdir", tmp_path / "run",
                               *tiny_overrides(data, max_steps=2))
    assert status == 0, err
    assert " INFO step 2/2: loss " in err
    assert "\n  eval_count       103\n" in out


def _raise(error):
    raise error


@pytest.mark.parametrize("make_error, user", [
    (lambda: create_model("lip_resnet5"), True),  # a check of lip_jax: raise ValueError
    (lambda: open("/nonexistent/file"), True),  # OSError: a missing file
    (lambda: _raise(FileExistsError("workdir locked")), True),
    (lambda: steps.normalize(jnp.ones((2, 3)), jnp.ones(4), jnp.ones(4)), False),  # in jax
    (lambda: np.zeros(3).reshape(4), False),  # a ValueError raised by a library
    (lambda: _raise(ValueError("raised in the test module, not in lip_jax")), False),
    (lambda: _raise(KeyError("x")), False),
    (lambda: _raise(TypeError("x")), False),
])
def test_user_errors_are_lip_jax_checks_and_os_errors(make_error, user):
    with pytest.raises(Exception) as error:
        make_error()
    assert cli.is_user_error(error.value) == user


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "demo", lambda args, overrides: np.zeros(3).reshape(4))
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["demo"])


def test_a_preempted_run_exits_with_status_75(tmp_path, monkeypatch):
    """The loop raises `Preempted` (a SystemExit) after saving; the CLI lets it through."""
    def stopped(config, workdir):
        raise loop.Preempted(5)

    monkeypatch.setattr(loop, "train_and_evaluate", stopped)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--workdir", str(tmp_path / "run")])
    assert exit_.value.code == 75


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_lists_every_config_field_and_explains_workdir(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config.field=value" in out
    assert " ".join(f"--workdir DIR {cli.WORKDIR_HELP[command]}".split()) in " ".join(out.split())
    assert describe_config() in out


def test_tables_are_rounded():
    table = cli._table({"eval_top1": np.float32(0.9139000177383423), "eval_top5": 0.999,
                        "eval_loss": np.float32(0.25123456), "eval_count": np.array(10000.0),
                        "step": 3752, "wall_time_s": 520.3127, "model": "lip_cnn"})
    assert table.splitlines() == [
        "  eval_top1        91.39%", "  eval_top5        99.90%", "  eval_loss        0.2512",
        "  eval_count       10000", "  step             3752", "  wall_time_s      520.3",
        "  model            lip_cnn"]


def test_models_pool_option_reaches_create_model(monkeypatch, capsys):
    """`--pool P` builds every model with `pool=P`; without it nothing is passed."""
    seen = []

    def fake_create_model(name, **kw):
        seen.append(kw)
        return create_model("cnn", widths=(2,), convs_per_stage=(1,))

    monkeypatch.setattr("lip_jax.models.create_model", fake_create_model)
    monkeypatch.setattr("lip_jax.models.list_models", lambda: ["lip_cnn"])
    cli.main(["models"])
    cli.main(["models", "--pool", "avg"])
    assert seen == [{}, {"pool": "avg"}]
    assert capsys.readouterr().out.count("28x28x1") == 2
