"""The training loop and evaluation: one mesh over every device of every host,
data-parallel `jax.jit` (`Trainer`), started only once every process agrees on the run.

Before any work every process compares its resolved config, absolute work directory,
command, software versions and what it read of the data (`cluster.agree`); the loop's
length comes only from these agreed values. Then the work directory is claimed (created,
locked, checked to be one directory for all), the newest intact checkpoint restored, and
the resume checked against the run's record, config.json (`workdir.check_record`).
"""

import logging
import os
import time
from importlib import metadata

import jax
import numpy as np
from etils import epath

from lip_jax import data
from lip_jax.train import cluster
from lip_jax.train.checkpoint import Checkpoints
from lip_jax.train.config import KIND, as_json
from lip_jax.train.metrics import MetricsWriter, Progress, last_evaluation, wall_time
from lip_jax.train.preemption import Preempted, StopSignals
from lip_jax.train.trainer import Trainer
from lip_jax.train.workdir import Claim, check_matches, check_record, write_record

log = logging.getLogger("lip_jax")
SOFTWARE = ("lip-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")

__all__ = ["Preempted", "Trainer", "evaluate_checkpoint", "latest_state",
           "train_and_evaluate"]


def exists(path) -> bool:
    """Whether `path` exists; OSError naming it where it cannot be reached (a gs:// URL
    without network or credentials)."""
    try:
        return epath.Path(path).exists()
    except Exception as error:
        raise OSError(f"{path} cannot be reached: {type(error).__name__}: "
                      f"{' '.join(str(error).split())}") from None


def _agree_on_run(config, workdir, command: str) -> bool:
    """Checks that every process runs the same command on the same config, work directory
    and software; returns whether the work directory exists, checked alike on every
    process. Runs before anything is read or built. Not compared: `process_id`, and where
    and how each process reads its data (`input` fields: a host may keep its copy
    elsewhere), whose content `_agree_on_data` compares."""
    software = {}
    for name in SOFTWARE:
        try:
            software[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            software[name] = None
    cluster.agree("the run", dict(
        command=command, workdir=_absolute(workdir), software=software,
        **{f"config.{k}": v for k, v in as_json(config).items()
           if k != "process_id" and KIND[k] != "input"}))
    found = exists(workdir)
    cluster.agree("the work directory", {f"whether {workdir} exists": found})
    if found and not epath.Path(workdir).is_dir():
        raise NotADirectoryError(f"work directory {workdir} is a file")
    return found


def _agree_on_data(trainer) -> None:
    """Checks that every process read the same data and derived the same loop length."""
    cluster.agree("the data", {f"data.{k}": v for k, v in trainer.facts().items()})


def _absolute(workdir) -> str:
    return str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)


def _check_finite(history, checkpoints):
    for step, metrics in history:
        if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
            raise FloatingPointError(
                f"loss {metrics['loss']} / gradient norm {metrics['grad_norm']} at step {step}: "
                f"stopping; {checkpoints.intact()}")


def train_and_evaluate(config, workdir, allow_config_change: bool = False) -> dict:
    """Trains `config` in `workdir`, resuming from its newest intact checkpoint; returns the
    final metrics (a finished run's from its metrics.jsonl) with the run's training time.
    Saves at least every `checkpoint_every_secs`, at the end, and on SIGTERM or SIGINT,
    then raises `Preempted`. A resume whose config changes what the run computes is refused
    unless `allow_config_change` (then recorded in config.json). A failure before training
    starts leaves no new directory.

    Every decision below is the same on every process at the same step: evaluate and log
    from the step; save from orbax's policy (decided on process 0, broadcast) or at the
    end; stop from the signal sync point; a non-finite loss is a replicated value."""
    began = time.monotonic()
    workdir = epath.Path(workdir)  # local, or a cloud URL such as gs://bucket/run
    _agree_on_run(config, workdir, "train")
    trainer = Trainer(config)  # builds the model, reads the data
    _agree_on_data(trainer)
    with Claim(workdir) as claim:
        check_matches(config, workdir)  # the directory as it is now, locked
        checkpoints = Checkpoints(workdir / "checkpoints", config.keep_checkpoints,
                                  every_secs=config.checkpoint_every_secs)
        try:
            state = checkpoints.restore_latest(trainer.abstract_state())
            start = 0 if state is None else int(jax.device_get(state.step))
            changes = check_record(config, workdir, start, allow_config_change,
                                   trainer.data_record())
            cluster.agree("the run's record", {"changes": changes})
            if state is None:
                state = trainer.init_state()  # init_from: may fail, like all above
            write_record(config, workdir, changes, trainer.data_record())
            if start >= trainer.total_steps:
                log.info("the run in %s is finished (step %d)", workdir, start)
                return dict(last_evaluation(workdir), step=start,
                            steps_per_epoch=trainer.steps_per_epoch)
            if start:
                log.info("resumed from the checkpoint at step %d in %s", start, workdir)
            before = wall_time(workdir)  # the run's training time in earlier sessions
            return _train(trainer, checkpoints, workdir, state, claim,
                          clock=lambda: before + time.monotonic() - began)
        finally:
            checkpoints.close()


def _train(trainer, checkpoints, workdir, state, claim, clock) -> dict:
    config = trainer.config
    start = int(jax.device_get(state.step))
    lead = jax.process_index() == 0
    writer = MetricsWriter(workdir, enabled=lead)
    batches = trainer.batches(trainer.input.train_batches(start, jax.process_index(),
                                                          jax.process_count()),
                              "the training split")
    batches = data.prefetch_to_device(batches, trainer.global_batch)  # copies overlap steps
    eval_every = max(1, int(min(config.eval_every_epochs * trainer.steps_per_epoch,
                                trainer.total_steps)))
    profile = _Profile(config.profile_steps, workdir / "profile")
    progress = Progress(start, trainer.total_steps, config.batch_size, enabled=lead)
    signals = StopSignals()
    history, final = [], {}
    log.info("compiling the train step")
    try:
        for step in range(start + 1, trainer.total_steps + 1):
            batch = next(batches)
            profile.before(step)
            with jax.transfer_guard("disallow"):
                state, metrics = trainer.train_step(state, batch)
            claim.started()  # a step has run: the directory stays, whatever happens next
            profile.after(step, state)
            history.append((step, metrics))
            last = step == trainer.total_steps
            stop = signals.reached(step) and not last  # a signal at the end changes nothing
            save = stop or last or checkpoints.should_save(step)
            log_now = step % config.log_every_steps == 0 or last
            evaluate = step % eval_every == 0 or last
            if log_now or save or evaluate:
                history = [(s, jax.device_get(m)) for s, m in history]
                _check_finite(history, checkpoints)
                step_metrics = history[-1][1]
                rate = progress.update(step, loss=step_metrics["loss"],
                                       accuracy=step_metrics["accuracy"])
                writer.write(step, **{k: np.mean([m[k] for _, m in history])
                                      for k in ("loss", "accuracy", "grad_norm")},
                             learning_rate=step_metrics["learning_rate"], images_per_sec=rate,
                             wall_time_s=clock())
                history = []
            if save:
                checkpoints.save(state)  # in the background
            if evaluate and not stop:
                final = dict(trainer.evaluate(state), wall_time_s=clock())
                writer.write(step, epoch=step / trainer.steps_per_epoch, **final)
                log.info("step %d: eval top-1 %.4f, top-5 %.4f", step, final["eval_top1"],
                         final["eval_top5"])
            if stop:
                log.warning("stopped at step %d by a stop signal (SIGTERM or SIGINT) with a "
                            "checkpoint; run the same command to resume", step)
                raise Preempted(step)
    finally:
        signals.restore()
        profile.stop()
        progress.close()
        writer.close()
    return dict(final, step=int(jax.device_get(state.step)),
                steps_per_epoch=trainer.steps_per_epoch)


class _Profile:
    """A `jax.profiler` trace of steps `first..last` (`config.profile_steps`, inclusive)
    into `directory`, on process 0; TensorBoard's profile tab or Perfetto read it."""

    def __init__(self, steps, directory):
        self.first, self.last = steps if steps and jax.process_index() == 0 else (0, -1)
        self.directory, self.active = directory, False

    def before(self, step: int) -> None:
        if step == self.first:
            log.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def latest_state(config, workdir):
    """(Trainer, newest intact state in `workdir`, or the `init_from` weights) for
    evaluation. Reads only: nothing is created or renamed."""
    directory = epath.Path(workdir) / "checkpoints"
    existed = _agree_on_run(config, workdir, "eval")
    found = exists(directory)
    cluster.agree("the checkpoints", {f"whether {directory} exists": found})
    if not config.init_from and not found:
        what = "holds no checkpoints/" if existed else "does not exist"
        raise FileNotFoundError(f"work directory {workdir} {what}, and config.init_from is "
                                "not set: nothing to evaluate")
    trainer = Trainer(config, training=False)
    _agree_on_data(trainer)
    if existed:
        check_matches(config, workdir)
    state = None
    if found:
        state = Checkpoints(directory).restore_latest(trainer.abstract_state())
    if state is None:
        if not config.init_from:
            raise FileNotFoundError(f"no checkpoint in {directory} and no config.init_from")
        state = trainer.init_state()
    return trainer, state


def evaluate_checkpoint(config, workdir) -> dict:
    """Evaluates the newest intact checkpoint in `workdir` (or `init_from` weights if none)."""
    trainer, state = latest_state(config, workdir)
    return dict(trainer.evaluate(state), step=int(jax.device_get(state.step)))
