"""The `lip-jax` command (also `python -m lip_jax`).

    lip-jax train [--config FILE] --workdir DIR [--config.field=value ...]
    lip-jax eval  [--config FILE] --workdir DIR [--config.field=value ...]
    lip-jax convert CHECKPOINT --model NAME --out DIR [--num-classes N]
    lip-jax models [--pool NAME]
    lip-jax demo

A mistake in what was asked (a config field, a model name, a missing, damaged or locked
file, processes that disagree) or a non-finite loss prints one line to stderr,
`lip-jax: error: ...`, and exits with status 2; progress goes to stdout; `--verbose` adds
the traceback and the libraries' logs. A run stopped by SIGTERM or SIGINT saves a
checkpoint and exits with status 75 (EX_TEMPFAIL: schedulers retry it); the same command
resumes it. Outside that (before training starts, or at a second signal), SIGINT (Ctrl-C)
exits at once with status 130 and SIGTERM with 75, saving nothing. On several processes,
one that fails makes every other print its line and exit likewise.
"""

import argparse
import dis
import logging
import os
import signal
import sys
import threading
import traceback

USER_ERROR_EXIT = 2  # as argparse's own usage errors
INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130, as shells report Ctrl-C
EX_TEMPFAIL = os.EX_TEMPFAIL  # 75, as lip_jax.train.preemption: schedulers retry
MESSAGE_LIMIT = 2000  # characters of an error message shown without --verbose
WORKDIR_HELP = {
    "train": "the run's directory (a local path or gs://...): checkpoints, config.json and "
             "metrics.jsonl go there; a rerun resumes from it",
    "eval": "a `lip-jax train` work directory: its config.json is the base config and its "
            "newest checkpoint is evaluated"}


def is_user_error(error: BaseException) -> bool:
    """True for an OSError (a missing, unreadable, damaged or locked file or directory) and
    for a ValueError, FloatingPointError or ImportError raised by a `raise` statement of
    lip_jax itself: its checks of config fields, names, data and checkpoint files, of what
    several processes agree on, of the extras a format needs, and its guard against a
    non-finite loss. Anything else, a ValueError raised inside a library included, is a
    bug and keeps its traceback."""
    if isinstance(error, OSError):
        return True
    if (not isinstance(error, (ValueError, FloatingPointError, ImportError))
            or error.__traceback__ is None):
        return False
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    raised_here = tb.tb_frame.f_code.co_code[tb.tb_lasti] == dis.opmap["RAISE_VARARGS"]
    return raised_here and (module == "lip_jax" or module.startswith("lip_jax."))


def _format(key: str, value) -> str:
    """Accuracies as percentages, counts as integers, seconds to 0.1, the rest to 4 places."""
    try:
        value = float(value)  # also numpy and 0-d array values
    except (TypeError, ValueError):
        return str(value)
    if any(k in key for k in ("top1", "top5", "accuracy")):
        return f"{100 * value:.2f}%"
    if value.is_integer():
        return str(int(value))
    return f"{value:.1f}" if key.endswith("_s") else f"{value:.4f}"


def _table(rows: dict) -> str:
    return "\n".join(f"  {k:<16} {_format(k, v)}" for k, v in rows.items())


def _config(args, overrides, **kw):
    from lip_jax.train import cluster
    from lip_jax.train.config import load_config
    config = load_config(args.config, overrides, **kw)
    cluster.initialize(config)
    return config


def train(args, overrides):
    """Trains (and evaluates) a config in a work directory; resumes if it holds checkpoints."""
    from lip_jax.train.loop import train_and_evaluate
    config = _config(args, overrides)
    result = train_and_evaluate(config, args.workdir,  # a signal: exit 75 (loop.Preempted)
                                allow_config_change=args.allow_config_change)
    print(f"{config.model} on {config.dataset}, work directory {args.workdir}:")
    print(_table(result))


def run_config(workdir) -> str | None:
    """The path of `workdir/config.json` if a run wrote one there, else None."""
    from etils import epath

    from lip_jax.train.loop import exists
    path = epath.Path(workdir) / "config.json"
    return str(path) if exists(path) else None


def evaluate(args, overrides):
    """Evaluates a run's newest checkpoint (or init_from weights) with its config.json."""
    from lip_jax.train.loop import evaluate_checkpoint
    config = _config(args, overrides, base=run_config(args.workdir))
    result = evaluate_checkpoint(config, args.workdir)
    print(f"{config.model} on {config.dataset}, work directory {args.workdir}:")
    print(_table(result))


def convert(args, overrides):
    """Converts an official PyTorch checkpoint into weights that eval and training load."""
    from lip_jax import pretrained
    from lip_jax.convert import from_torch_state_dict, read_checkpoint
    variables = from_torch_state_dict(args.model, read_checkpoint(args.checkpoint),
                                      num_classes=args.num_classes)
    pretrained.save_variables(args.out, args.model, variables)
    print(f"wrote {args.model} weights to {args.out}; use them with "
          f"--config.model={args.model} --config.init_from={args.out}")


def models(args, overrides):
    """Every model's parameters and multiply-adds at its own input size, and the paper's."""
    import jax
    import jax.numpy as jnp

    from lip_jax.models import create_model, list_models, model_spec
    print(f"{'model':<16} {'input':>11} {'params (M)':>10} {'GMACs':>8} {'paper params':>13} "
          f"{'paper GMACs':>12}")
    for name in list_models():
        spec = model_spec(name)
        model = create_model(name, **({"pool": args.pool} if args.pool else {}))
        images = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        params = sum(x.size for x in jax.tree.leaves(variables["params"]))
        cost = jax.jit(model.apply).lower(variables, images).cost_analysis()
        paper = (f"{spec.paper_params_m:>12.1f}M {spec.paper_gmacs:>11.2f}G"
                 if spec.paper_params_m else f"{'-':>13} {'-':>12}")
        print(f"{name:<16} {'x'.join(map(str, spec.input_shape)):>11} {params / 1e6:>10.3f} "
              f"{cost['flops'] / 2e9:>8.3f} {paper}")


def demo(args, overrides):
    """Shows LIP's special cases against the classical pools they stand for."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from lip_jax import linen as L, ops

    x = jax.random.uniform(jax.random.key(args.seed), (2, 15, 15, 8), minval=-1.0)
    geometry = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    rows = [("lip_pool, logits 0", ops.lip_pool(x, jnp.zeros(()), *geometry),
             "avg_pool (pad excluded)",
             nn.avg_pool(x, *geometry, count_include_pad=False))]
    for beta in (4.0, 16.0, 40.0):
        rows.append((f"lip_pool, logits {beta:g} x", ops.tempered_max_pool(x, *geometry, beta=beta),
                     "max_pool", nn.max_pool(x, *geometry)))
    layer = L.LIP(L.ProjectionLogit())
    variables = layer.init(jax.random.key(1), x)
    rows.append(("LIP(ProjectionLogit) at init", layer.apply(variables, x),
                 "avg_pool (pad excluded)", rows[0][3]))
    print(f"input {tuple(x.shape)}, window 3x3, stride 2, padding 1 -> output "
          f"{tuple(rows[0][1].shape)}")
    print(f"{'LIP form':<30} {'classical pool':<26} {'max |difference|':>16}")
    for name, out, ref_name, ref in rows:
        print(f"{name:<30} {ref_name:<26} {float(jnp.abs(out - ref).max()):16.2e}")


def _config_fields() -> str:
    """The epilog of `train --help` and `eval --help`: every config field."""
    try:
        from lip_jax.train.config import describe_config
    except ImportError:  # ml_collections comes with the train extra
        return "Install lip-jax[train] to train; `lip-jax train --help` then lists the fields."
    return "config fields (--config.field=value), defaults and meanings:\n" + describe_config()


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in one line, as every other error."""

    def error(self, message):
        self.exit(USER_ERROR_EXIT, f"lip-jax: error: {message} (`{self.prog} --help` "
                                   "explains)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


def _directory(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, not an empty string")
    return text


def parser() -> argparse.ArgumentParser:
    from lip_jax.models import POOL_CHOICES
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show tracebacks and the libraries' logs")
    main_parser = _Parser(prog="lip-jax", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main_parser.add_subparsers(dest="command", required=True)
    epilog = _config_fields()
    for name, run in (("train", train), ("eval", evaluate)):
        p = commands.add_parser(
            name, help=run.__doc__, description=run.__doc__, epilog=epilog,
            parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
            usage=f"lip-jax {name} [--config FILE] --workdir DIR [--config.field=value ...]")
        p.add_argument("--config", metavar="FILE", help="a Python file with get_config() "
                       "(see experiments/configs/); default: the offline Fashion-MNIST job")
        p.add_argument("--workdir", metavar="DIR", required=True, type=_directory,
                       help=WORKDIR_HELP[name])
        if name == "train":
            p.add_argument("--allow-config-change", action="store_true",
                           help="resume even if the config changes what the run computes "
                                "(e.g. learning_rate); config.json records the change")
        p.set_defaults(run=run)
    p = commands.add_parser("convert", help=convert.__doc__, description=convert.__doc__,
                            parents=[common])
    p.add_argument("checkpoint", help="the official .pth / .pth.tar (or .npz, .safetensors)")
    p.add_argument("--model", required=True, help="e.g. lip_resnet50 (see `lip-jax models`)")
    p.add_argument("--out", metavar="DIR", required=True, type=_directory,
                   help="where to write the weights")
    p.add_argument("--num-classes", type=_positive, default=1000,
                   help="classes of the checkpoint's classifier (default 1000)")
    p.set_defaults(run=convert)
    p = commands.add_parser("models", help=models.__doc__, description=models.__doc__,
                            parents=[common])
    p.add_argument("--pool", choices=POOL_CHOICES,
                   help="build every model with this pooling (create_model's pool=)")
    p.set_defaults(run=models)
    p = commands.add_parser("demo", help=demo.__doc__, description=demo.__doc__,
                            parents=[common])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    return main_parser


def _quiet_libraries(verbose: bool) -> None:
    logging.getLogger("jax").setLevel(logging.INFO if verbose else logging.WARNING)
    # orbax logs ~100 lines about a failed restore and a traceback per failed save (a full
    # disk), at ERROR: the command's own error names what failed, in one line.
    for library, quiet in (("absl", logging.ERROR), ("orbax", logging.CRITICAL)):
        logging.getLogger(library).setLevel(logging.INFO if verbose else quiet)
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ notices
    # Errors of libraries' background threads and callbacks (an orbax save on a full disk
    # leaves a dozen) go to the log; the error that ends the command is the line on stderr.
    libraries = logging.getLogger("lip_jax.libraries")
    sys.unraisablehook = lambda u: libraries.debug("%s: %s", u.err_msg, u.exc_value)
    threading.excepthook = lambda t: libraries.debug("thread %s: %s", t.thread, t.exc_value)


class Terminated(BaseException):
    """SIGTERM outside the training loop's handling (which saves and stops on the first)."""


def _terminate(signum, frame):
    raise Terminated()


def one_line(error: BaseException) -> str:
    """The error's message on one line (at most MESSAGE_LIMIT characters)."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = text or type(error).__name__
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + " ... (--verbose shows all of it)"
    return text


def main(argv=None):
    # First: absl configures the root logger itself at its first message (orbax logs at
    # import), and then this would do nothing. Logs go to stdout: stderr holds errors.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.captureWarnings(True)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(argv) -> None:
    """Parses and runs the command; every failure ends in `cluster.stop` (one line, a
    status, and on several processes the others told)."""
    args = None
    try:
        main_parser = parser()
        args, overrides = main_parser.parse_known_args(argv)
        if overrides and args.command not in ("train", "eval"):
            main_parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        _quiet_libraries(args.verbose)
        args.run(args, overrides)
    except KeyboardInterrupt:
        _stop("interrupted (SIGINT) without saving; the same command starts again from the "
              "newest checkpoint, if any", INTERRUPTED_EXIT, at_once=True)
    except Terminated:
        _stop("stopped by SIGTERM without saving; the same command starts again from the "
              "newest checkpoint, if any", EX_TEMPFAIL, at_once=True)
    except Exception as error:
        user = is_user_error(error)
        if getattr(args, "verbose", False) or not user:
            traceback.print_exc()
        if user:
            _stop(one_line(error), USER_ERROR_EXIT)
        _stop(f"{type(error).__name__}: {one_line(error)} (a bug in lip-jax or a library: "
              "the traceback above tells where)", 1)


def _stop(message: str, status: int, at_once: bool = False) -> None:
    cluster = sys.modules.get("lip_jax.train.cluster")  # imported where processes join
    if cluster is not None:
        cluster.stop(message, status, at_once)
    sys.stdout.flush()
    print(f"lip-jax: error: {message}", file=sys.stderr, flush=True)
    (os._exit if at_once else sys.exit)(status)
