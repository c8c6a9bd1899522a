"""The command line as a newcomer meets it: every mistake is one line on stderr and status 2
(a signal: 130 or 75) and leaves no new directory; help, rounded tables, exit codes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import cli, pretrained
from lip_jax.models import create_model
from lip_jax.train import loop, steps, workdir
from lip_jax.train.config import describe_config
from train_helpers import make_fashion_mnist, tiny_overrides, write_idx

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.model_kwargs.widths=(4, 8)", "--config.batch_size=32",
        "--config.eval_batch_size=40", "--config.num_threads=2"]

# Bad inputs, one row each: (what, `lip-jax` arguments, exit status, a fragment of the one
# line on stderr). In the arguments {data} is a tiny Fashion-MNIST folder, {tmp} holds the
# files `scratch` writes, and {run} and {out} must not exist afterwards. Add a row for
# every new mistake a user can make.
BAD_INPUTS = [
    ("no --workdir", ["train"], 2, "the following arguments are required: --workdir"),
    ("an empty --workdir", ["train", "--workdir", ""], 2, "must name a directory"),
    ("an unknown command", ["trian"], 2, "invalid choice: 'trian'"),
    ("config overrides to a command without a config",
     ["models", "--config.seed=1"], 2, "unrecognized arguments: --config.seed=1"),
    ("an unknown pool", ["models", "--pool", "median"], 2, "invalid choice: 'median'"),
    ("a misspelled field", ["train", "--workdir", "{run}", "--config.modle=cnn"], 2,
     "unknown config field 'modle' in the command line (did you mean 'model'?)"),
    ("a misspelled model", ["train", "--workdir", "{run}", "--config.model=lip_resnet5"], 2,
     "did you mean 'lip_resnet50'"),
    ("a bool batch size", ["train", "--workdir", "{run}", "--config.batch_size=True"], 2,
     "config.batch_size = True (from the command line): must be an integer"),
    ("a negative batch size", ["train", "--workdir", "{run}", "--config.batch_size=-3"], 2,
     "config.batch_size = -3: must be > 0"),
    ("infinite epochs", ["train", "--workdir", "{run}", "--config.num_epochs=1e999"], 2,
     "config.num_epochs = inf (from the command line): must be a finite number"),
    ("infinite evaluation epochs",
     ["train", "--workdir", "{run}", "--config.eval_every_epochs=1e999"], 2,
     "config.eval_every_epochs = inf"),
    ("a negative seed", ["train", "--workdir", "{run}", "--config.seed=-1"], 2,
     "config.seed = -1: must be >= 0"),
    ("a misspelled model argument",
     ["train", "--workdir", "{run}", "--config.model_kwargs.widht=(4, 8)"], 2,
     "lip_cnn has no argument 'widht' (did you mean 'widths'?)"),
    ("a model argument of the wrong kind",
     ["train", "--workdir", "{run}", "--config.model_kwargs.widths='wide'"], 2,
     "config.model = 'lip_cnn' with model_kwargs {'widths': 'wide'} does not build for "
     "28x28x1 images: "),
    ("a model that is no classifier",
     ["train", "--workdir", "{run}", "--config.model=resnet18",
      "--config.model_kwargs.features_only=True"], 2,
     "does not build for 28x28x1 images: it returns {'C2': (1, 7, 7, 64)"),
    ("a field the dataset does not read",
     ["train", "--workdir", "{run}", "--config.dataset=small_objects",
      "--config.data_dir={data}"], 2, "config.data_dir = '{data}': small_objects does not "
                                      "read it (it reads no such field)"),
    ("an image size for Fashion-MNIST", ["train", "--workdir", "{run}", "--config.image_size=64"],
     2, "config.image_size = 64: fashion_mnist does not read it (it reads data_dir)"),
    ("num_classes through model arguments",
     ["train", "--workdir", "{run}", "--config.model_kwargs.num_classes=0"], 2,
     "config.model_kwargs sets 'num_classes', which the dataset decides"),
    ("a cluster address without distributed",
     ["train", "--workdir", "{run}", "--config.coordinator_address=localhost:1234"], 2,
     "set --config.distributed=True"),
    ("a garbage cluster address",
     ["train", "--workdir", "{run}", "--config.distributed=True",
      "--config.coordinator_address=garbage", "--config.num_processes=2",
      "--config.process_id=0"], 2, "config.coordinator_address = 'garbage': must be"),
    ("a cluster host that does not exist",
     ["train", "--workdir", "{run}", "--config.distributed=True",
      "--config.coordinator_address=no-such-host.invalid:1234", "--config.num_processes=2",
      "--config.process_id=0"], 2, "host 'no-such-host.invalid' is not found"),
    ("a process id beyond the process count",
     ["train", "--workdir", "{run}", "--config.distributed=True",
      "--config.coordinator_address=localhost:1234", "--config.num_processes=2",
      "--config.process_id=2"], 2, "config.process_id = 2: must be below"),
    ("a config file that fails", ["train", "--workdir", "{run}", "--config", "{tmp}/fails.py"],
     2, "fails.py fails: ZeroDivisionError: division by zero"),
    ("a missing config file", ["train", "--workdir", "{run}", "--config", "{tmp}/nope.py"], 2,
     "config file {tmp}/nope.py not found"),
    ("a directory as config file", ["train", "--workdir", "{run}", "--config", "{tmp}"], 2,
     "config file {tmp} is a directory, not a file"),
    ("a missing data_dir", ["train", "--workdir", "{run}", "--config.data_dir={tmp}/nothing"], 2,
     "Fashion-MNIST not found"),
    ("a truncated data file", ["train", "--workdir", "{run}", "--config.data_dir={tmp}/cut",
                               *TINY], 2, "t10k-labels-idx1-ubyte.gz is truncated or damaged"),
    ("labels beyond the classes", ["train", "--workdir", "{run}",
                                   "--config.data_dir={tmp}/labels", *TINY], 2,
     "train-labels-idx1-ubyte.gz holds labels outside 0..9 (1 of them), e.g. 12 at example 5"),
    ("no evaluation examples", ["train", "--workdir", "{run}", "--config.data_dir={tmp}/noeval",
                                *TINY], 2, "the fashion_mnist evaluation split is empty"),
    ("a batch larger than the data", ["train", "--workdir", "{run}", "--config.data_dir={data}",
                                      *TINY, "--config.batch_size=512"], 2,
     "the fashion_mnist training split holds only 256 examples"),
    ("a batch the devices do not divide",
     ["train", "--workdir", "{run}", "--config.data_dir={data}", *TINY,
      "--config.batch_size=12"], 2, "config.batch_size = 12 is not divisible by the 8 devices"),
    ("warmup longer than the run", ["train", "--workdir", "{run}", "--config.data_dir={data}",
                                    *TINY, "--config.max_steps=2", "--config.warmup_epochs=0.5"],
     2, "config.warmup_epochs = 0.5: 4 warmup steps, not fewer than the run's 2 steps"),
    ("init_from nothing", ["train", "--workdir", "{run}", "--config.data_dir={data}", *TINY,
                           "--config.init_from={tmp}/nothing"], 2,
     "holds neither converted weights (model.json) nor a training run"),
    ("init_from another model's weights",
     ["train", "--workdir", "{run}", "--config.data_dir={data}", *TINY,
      "--config.init_from={tmp}/cnn_weights"], 2, "holds weights of 'cnn', not 'lip_cnn'"),
    ("a work directory that is a file", ["train", "--workdir", "{tmp}/fails.py",
                                         "--config.data_dir={data}", *TINY], 2,
     "work directory {tmp}/fails.py is a file"),
    ("an unreachable gs:// work directory",
     ["train", "--workdir", "gs://lip-jax-no-such-bucket/run", "--config.data_dir={data}",
      *TINY], 2, "gs://lip-jax-no-such-bucket/run cannot be reached"),
    ("eval of a misspelled work directory",
     ["eval", "--workdir", "{run}", "--config.data_dir={tmp}/nothing"], 2,
     "work directory {run} does not exist, and config.init_from is not set"),
    ("eval of a garbage config.json", ["eval", "--workdir", "{tmp}/garbage"], 2,
     "{tmp}/garbage/config.json is not a config.json (JSON)"),
    ("eval of a config.json holding a list", ["eval", "--workdir", "{tmp}/listed"], 2,
     "holds a JSON list, not a config.json object"),
    ("convert of a missing file", ["convert", "{tmp}/missing.pth", "--model", "lip_resnet50",
                                   "--out", "{out}"], 2, "checkpoint {tmp}/missing.pth not found"),
    ("convert of an unknown kind of file", ["convert", "{tmp}/fails.py", "--model",
                                            "lip_resnet50", "--out", "{out}"], 2,
     "expected a .pth, .pt, .pth.tar, .npz or .safetensors file"),
    ("convert of text named .pth", ["convert", "{tmp}/text.pth", "--model", "lip_resnet50",
                                    "--out", "{out}"], 2, "text.pth is not a .pth checkpoint"),
    ("convert of text named .npz", ["convert", "{tmp}/text.npz", "--model", "lip_resnet50",
                                    "--out", "{out}"], 2, "text.npz is not a .npz checkpoint"),
    ("convert of text named .safetensors",
     ["convert", "{tmp}/text.safetensors", "--model", "lip_resnet50", "--out", "{out}"], 2,
     "text.safetensors is not a .safetensors checkpoint"),
    ("convert to zero classes", ["convert", "{tmp}/text.pth", "--model", "lip_resnet50",
                                 "--out", "{out}", "--num-classes", "0"], 2,
     "--num-classes: must be an integer >= 1, not '0'"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """{data} and {tmp} of the rows: a tiny dataset and the files the mistakes need."""
    tmp = tmp_path_factory.mktemp("scratch")
    data = make_fashion_mnist(tmp / "data")
    (tmp / "fails.py").write_text("def get_config():\n    return 1 / 0\n")
    for name, text in (("garbage", "{garbage"), ("listed", "[1, 2]")):
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(text)
    for suffix in ("pth", "npz", "safetensors"):
        (tmp / f"text.{suffix}").write_text("not a checkpoint\n")
    make_fashion_mnist(tmp / "noeval", num_test=0)
    cut = make_fashion_mnist(tmp / "cut")
    labels = cut / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-9])
    bad = make_fashion_mnist(tmp / "labels")
    values = np.random.default_rng(0).integers(0, 10, 256)
    values[5] = 12
    write_idx(bad / "train-labels-idx1-ubyte.gz", values)
    model = create_model("cnn", num_classes=10, widths=(4, 8))
    pretrained.save_variables(tmp / "cnn_weights", "cnn", jax.device_get(
        model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))))
    return {"data": str(data), "tmp": str(tmp)}


def _fill(text: str, places: dict) -> str:
    for name, value in places.items():
        text = text.replace(f"{{{name}}}", value)
    return text


@pytest.mark.parametrize("argv, status, fragment", [row[1:] for row in BAD_INPUTS],
                         ids=[row[0] for row in BAD_INPUTS])
def test_a_bad_input_is_one_line_with_its_status_and_leaves_no_directory(
        scratch, tmp_path, capsys, argv, status, fragment):
    places = dict(scratch, run=str(tmp_path / "run"), out=str(tmp_path / "out"))
    with pytest.raises(SystemExit) as exit_:
        cli.main([_fill(a, places) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == status, err
    assert err.startswith("lip-jax: error: ") and err.count("\n") == 1, err
    assert _fill(fragment, places) in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def run_cli(*args, env=None):
    """`python -m lip_jax args...` from the repository root -> (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "lip_jax", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    return done.returncode, done.stdout, done.stderr


def test_distributed_without_a_cluster_is_one_line(tmp_path):
    """(In a process of its own: joining changes JAX's global state.)"""
    status, _, err = run_cli("train", "--workdir", tmp_path / "run", "--config.distributed=True",
                             env={"JAX_PLATFORMS": "cpu"})
    assert status == 2 and err.count("\n") == 1, err
    assert "config.distributed = True: joining the other processes fails" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 75)],
                         ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_before_training_is_one_line_and_its_status(tmp_path, signum, status):
    """The config file stands for any slow start (reading data, compiling)."""
    started = tmp_path / "started"
    config = tmp_path / "slow.py"
    config.write_text(f"import pathlib, time\n\ndef get_config():\n"
                      f"    pathlib.Path({str(started)!r}).touch()\n"
                      "    time.sleep(300)\n")
    process = subprocess.Popen([sys.executable, "-m", "lip_jax", "train", "--workdir",
                                str(tmp_path / "run"), "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert err.startswith("lip-jax: error: ") and err.count("\n") == 1, err
    assert "without saving; the same command starts again from the newest checkpoint" in err
    assert not (tmp_path / "run").exists()


SMALL_FILES = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
sys.argv[0] = "lip-jax"
runpy.run_module("lip_jax", run_name="__main__")
"""


def test_a_full_disk_is_one_line(scratch, tmp_path):
    """Files may not grow beyond 2 kB (as on a full disk): the first checkpoint fails."""
    done = subprocess.run([sys.executable, "-c", SMALL_FILES, "train", "--workdir",
                           str(tmp_path / "run"), f"--config.data_dir={scratch['data']}", *TINY,
                           "--config.max_steps=2", "--config.checkpoint_every_secs=1e-9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("lip-jax: error: saving a checkpoint in ")
    assert done.stderr.count("\n") == 1 and "File too large" in done.stderr


def user_error(capsys, *args) -> str:
    """Runs `lip-jax args...`, checks that it is refused with status 2 and one line, and
    returns that line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in args])
    assert exit_.value.code == cli.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.startswith("lip-jax: error: ") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_a_non_finite_loss_stops_with_one_line(tmp_path, capsys):
    overrides = tiny_overrides(make_fashion_mnist(tmp_path / "data"), max_steps=3,
                               learning_rate=1e30)
    line = user_error(capsys, "train", "--workdir", tmp_path / "run", *overrides)
    assert "at step 2" in line


def test_a_locked_work_directory_is_one_line(scratch, tmp_path, capsys):
    with workdir.Claim(tmp_path / "run"):  # another trainer holds it
        line = user_error(capsys, "train", "--workdir", tmp_path / "run",
                          f"--config.data_dir={scratch['data']}", *TINY)
    assert "is in use by another trainer (pid " in line and "lock" in line


def test_verbose_shows_the_traceback_too(tmp_path):
    status, _, err = run_cli("train", "--workdir", tmp_path / "run", "--config.batch_size=0")
    assert status == 2 and err == "lip-jax: error: config.batch_size = 0: must be > 0\n"
    status, _, err = run_cli("train", "--verbose", "--workdir", tmp_path / "run",
                             "--config.batch_size=0")
    assert status == 2 and "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("lip-jax: error: config.batch_size = 0: must be > 0")


def test_progress_goes_to_stdout_and_the_run_ends_with_a_table(tmp_path):
    """As a program (no pytest logging), status lines reach stdout, stderr stays empty: the
    root logger is set up before any library configures it."""
    data = make_fashion_mnist(tmp_path / "data")
    status, out, err = run_cli("train", "--workdir", tmp_path / "run",
                               *tiny_overrides(data, max_steps=2))
    assert status == 0 and err == "", err
    assert " INFO step 2/2: loss " in out
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


def test_bugs_keep_their_traceback_and_exit_with_status_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "demo", lambda args, overrides: np.zeros(3).reshape(4))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("lip-jax: error: ValueError: cannot reshape")


def test_a_preempted_run_exits_with_status_75(tmp_path, monkeypatch):
    """The loop raises `Preempted` (a SystemExit) after saving; the CLI lets it through."""
    def stopped(config, workdir, allow_config_change):
        raise loop.Preempted(5)

    monkeypatch.setattr(loop, "train_and_evaluate", stopped)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--workdir", str(tmp_path / "run")])
    assert exit_.value.code == 75


def test_messages_are_one_line_and_bounded():
    assert cli.one_line(ValueError("a\n  b\n\nc")) == "a; b; c"
    assert cli.one_line(ValueError("")) == "ValueError"
    long = cli.one_line(ValueError("x" * 5000))
    assert len(long) < cli.MESSAGE_LIMIT + 50 and long.endswith("(--verbose shows all of it)")


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
