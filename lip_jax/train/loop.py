"""The training loop: one mesh over every device of every host, data-parallel `jax.jit`.

The same code runs on one CPU, 8 fake CPU devices, a GPU box or a TPU pod: the batch is
sharded over the mesh axis "data", the state is replicated, and `jax.distributed`
connects hosts when `config.distributed` is set.
"""

import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from lip_jax import data, pretrained
from lip_jax.models import create_model
from lip_jax.train import steps
from lip_jax.train.checkpoint import Checkpoints, exists_on_every_process
from lip_jax.train.metrics import MetricsWriter, Progress, last_evaluation
from lip_jax.train.preemption import Preempted, StopSignals
from lip_jax.train.workdir import check_matches, exclusive
from lip_jax.train.optim import make_optimizer, make_schedule

log = logging.getLogger("lip_jax")


def initialize_distributed(config) -> None:
    """Connects the hosts (TPU pods and SLURM/MPI clusters detect their peers; elsewhere
    `coordinator_address`, `num_processes` and `process_id` say who is who)."""
    if not config.distributed:
        return
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if config.coordinator_address:
        kw = dict(coordinator_address=config.coordinator_address,
                  num_processes=config.num_processes, process_id=config.process_id)
    jax.distributed.initialize(**kw)


class Trainer:
    """Model, optimizer, shardings and jitted steps for one config."""

    def __init__(self, config, devices=None):
        self.config = config
        self.info = data.info(config.dataset)
        devices = jax.devices() if devices is None else devices
        if config.batch_size % len(devices):
            raise ValueError(f"config.batch_size = {config.batch_size} is not divisible by "
                             f"the {len(devices)} devices")
        # Padding and a mask count each example once: any evaluation batch serves.
        self.eval_batch_size = -(-config.eval_batch_size // len(devices)) * len(devices)
        if self.eval_batch_size != config.eval_batch_size:
            log.info("evaluating in batches of %d: config.eval_batch_size = %d rounded up to "
                     "a multiple of the %d devices", self.eval_batch_size,
                     config.eval_batch_size, len(devices))
        log.info("loading %s", config.dataset)
        self.input = data.input_pipeline(config)
        self.steps_per_epoch = max(1, self.input.num_train // config.batch_size)
        self.total_steps = (config.max_steps if config.max_steps > 0
                            else math.ceil(config.num_epochs * self.steps_per_epoch))
        self.model = create_model(config.model, num_classes=self.info.num_classes,
                                  dtype=jnp.dtype(config.dtype),
                                  bn_group_size=config.bn_group_size, **config.model_kwargs)
        self.schedule = make_schedule(config, self.steps_per_epoch, self.total_steps)
        self.tx = make_optimizer(config, self.schedule)
        mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                             axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(mesh, P())
        self.sharded = NamedSharding(mesh, P("data"))
        norm = dict(mean=self.info.mean, std=self.info.std)
        self.train_step = jax.jit(
            functools.partial(steps.train_step, model=self.model, tx=self.tx,
                              schedule=self.schedule, num_classes=self.info.num_classes,
                              label_smoothing=config.label_smoothing, **norm),
            in_shardings=(self.replicated, self.sharded), out_shardings=self.replicated,
            donate_argnums=0)
        self.eval_step = jax.jit(functools.partial(steps.eval_step, model=self.model, **norm),
                                 in_shardings=(self.replicated, self.sharded),
                                 out_shardings=self.replicated)

    def _fresh_state(self) -> steps.TrainState:
        variables = self.model.init(jax.random.key(self.config.seed),
                                    jnp.zeros((1, *data.image_shape(self.config))))
        return steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                batch_stats=variables["batch_stats"],
                                opt_state=self.tx.init(variables["params"]))

    def init_state(self) -> steps.TrainState:
        """A fresh state, or the `init_from` weights with a fresh classifier where theirs
        has another shape (another num_classes); replicated over the mesh."""
        state = jax.jit(self._fresh_state, out_shardings=self.replicated)()
        if self.config.init_from:
            fresh = {"params": state.params, "batch_stats": state.batch_stats}
            classifier = pretrained.classifier_paths(self.model, data.image_shape(self.config))
            variables, replaced = pretrained.fit_variables(
                pretrained.load_variables(self.config.init_from, self.config.model), fresh,
                classifier, self.config.init_from)
            state = state.replace(**jax.device_put(variables, self.replicated))
            log.info("initialised from %s", self.config.init_from)
            if replaced:
                log.info("re-initialised the classifier (another num_classes): %s",
                         ", ".join(replaced))
        return state

    def abstract_state(self):
        """Shapes, dtypes and shardings of the state, computing nothing."""
        shapes = jax.eval_shape(self._fresh_state)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                           sharding=self.replicated), shapes)

    def global_batch(self, local: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
                for k, v in local.items()}

    def evaluate(self, state) -> dict:
        """Top-1/top-5 accuracy and loss over the whole eval split, each example once."""
        totals = None
        for batch in self.input.eval_batches(self.eval_batch_size, jax.process_index(),
                                             jax.process_count()):
            sums = self.eval_step(state, self.global_batch(batch))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = totals["count"]
        return dict(eval_top1=totals["top1"] / count, eval_top5=totals["top5"] / count,
                    eval_loss=totals["loss"] / count, eval_count=count)


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


def _check_finite(history, checkpoints):
    for step, metrics in history:
        if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
            raise FloatingPointError(
                f"loss {metrics['loss']} / gradient norm {metrics['grad_norm']} at step {step}: "
                f"stopping; {checkpoints.intact()}")


def train_and_evaluate(config, workdir) -> dict:
    """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final
    metrics (a finished run's from its metrics.jsonl). Saves at least every
    `checkpoint_every_secs`, at the end, and on SIGTERM or SIGINT, then raises `Preempted`.

    Every decision below is the same on every process at the same step: evaluate and log
    from the step; save from orbax's policy (decided on process 0, broadcast) or at the
    end; stop from the signal sync point; a non-finite loss is a replicated value."""
    workdir = epath.Path(workdir)  # local, or a cloud URL such as gs://bucket/run
    trainer = Trainer(config)  # reads the data: nothing is created before it succeeds
    check_matches(config, workdir)
    with exclusive(workdir):
        checkpoints = Checkpoints(workdir / "checkpoints", config.keep_checkpoints,
                                  every_secs=config.checkpoint_every_secs)
        try:
            return _train(trainer, checkpoints, workdir)
        finally:
            checkpoints.wait()
            checkpoints.close()


def _train(trainer, checkpoints, workdir) -> dict:
    config = trainer.config
    state = checkpoints.restore_latest(trainer.abstract_state())
    if state is None:
        state = trainer.init_state()
    start = int(jax.device_get(state.step))
    if start >= trainer.total_steps:
        log.info("the run in %s is finished (step %d)", workdir, start)
        return dict(last_evaluation(workdir), step=start,
                    steps_per_epoch=trainer.steps_per_epoch)
    if start:
        log.info("resumed from the checkpoint at step %d in %s", start, workdir)
    lead = jax.process_index() == 0
    if lead:
        (workdir / "config.json").write_text(config.to_json(indent=1))
    writer = MetricsWriter(workdir, enabled=lead)
    batches = trainer.input.train_batches(start, jax.process_index(), jax.process_count())
    batches = data.prefetch_to_device(batches, trainer.global_batch)  # copies overlap steps
    eval_every = max(1, int(config.eval_every_epochs * trainer.steps_per_epoch))
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
                             learning_rate=step_metrics["learning_rate"], images_per_sec=rate)
                history = []
            if save:
                checkpoints.save(state)  # in the background
            if evaluate and not stop:
                final = trainer.evaluate(state)
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


def latest_state(config, workdir):
    """(Trainer, newest restorable state in `workdir`, or the `init_from` weights). Reads
    only: a missing directory is created by nothing."""
    trainer = Trainer(config)
    check_matches(config, workdir)
    directory = epath.Path(workdir) / "checkpoints"
    state = None
    if exists_on_every_process(directory):
        checkpoints = Checkpoints(directory)
        state = checkpoints.restore_latest(trainer.abstract_state())
        checkpoints.close()
    if state is None:
        if not config.init_from:
            raise FileNotFoundError(f"no checkpoint in {directory} and no config.init_from")
        state = trainer.init_state()
    return trainer, state


def evaluate_checkpoint(config, workdir) -> dict:
    """Evaluates the newest checkpoint in `workdir` (or `init_from` weights if none)."""
    trainer, state = latest_state(config, workdir)
    return dict(trainer.evaluate(state), step=int(jax.device_get(state.step)))
