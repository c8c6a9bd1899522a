"""What a config trains: the model, the data, the optimizer, shardings and jitted steps.

The same code runs on one CPU, 8 fake CPU devices, a GPU box or a TPU pod: the batch is
sharded over the mesh axis "data" and the state is replicated.
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
from lip_jax.data.pipeline import check_labels
from lip_jax.models import create_model
from lip_jax.train import steps
from lip_jax.train.checkpoint import Checkpoints
from lip_jax.train.config import DEFAULTS, INT_LIMIT, check_config, read_record
from lip_jax.train.optim import make_optimizer, make_schedule

log = logging.getLogger("lip_jax")


class Trainer:
    """Model, data, optimizer, shardings and jitted steps for one config, checked first
    (`check_config`, as the command line checks it). `training=False` (evaluation) skips
    the checks that only training needs, such as a batch size that the device count
    divides."""

    def __init__(self, config, devices=None, training: bool = True):
        check_config(config)
        self.config = config
        self.info = data.info(config.dataset)
        devices = jax.devices() if devices is None else devices
        if training and config.batch_size % len(devices):
            raise ValueError(f"config.batch_size = {config.batch_size} is not divisible by "
                             f"the {len(devices)} devices")
        self.model = create_model(config.model, num_classes=self.info.num_classes,
                                  dtype=jnp.dtype(config.dtype),
                                  bn_group_size=config.bn_group_size, **config.model_kwargs)
        self._check_model()  # before the data: it may take minutes to read
        log.info("loading %s", config.dataset)
        self.input = _read(config)
        if not self.input.num_eval:
            raise ValueError(f"the {config.dataset} evaluation split is empty")
        # Padding and a mask count each example once: any evaluation batch serves, up to
        # the split's size, rounded up to a multiple of the devices.
        wanted = min(config.eval_batch_size, self.input.num_eval)
        self.eval_batch_size = -(-wanted // len(devices)) * len(devices)
        if self.eval_batch_size != config.eval_batch_size:
            log.info("evaluating in batches of %d: config.eval_batch_size = %d, at most the "
                     "%d evaluation examples, rounded up to a multiple of the %d devices",
                     self.eval_batch_size, config.eval_batch_size, self.input.num_eval,
                     len(devices))
        self.steps_per_epoch = max(1, self.input.num_train // config.batch_size)
        self.total_steps = (config.max_steps if config.max_steps > 0
                            else math.ceil(config.num_epochs * self.steps_per_epoch))
        if training:
            self._check_length()
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

    def _check_model(self) -> None:
        """The model builds from the config and maps its images to one logit per class
        (shapes only, nothing computed)."""
        c, shape = self.config, data.image_shape(self.config)
        images = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        try:
            logits, _ = jax.eval_shape(functools.partial(self.model.init_with_output,
                                                         train=False),
                                       jax.random.key(0), images)
            problem = (None if getattr(logits, "shape", None) == (1, self.info.num_classes)
                       else f"it returns {jax.tree.map(lambda x: x.shape, logits)}, not "
                            f"(1, {self.info.num_classes}) logits")
        except Exception as error:
            problem = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
        if problem:
            raise ValueError(f"config.model = {c.model!r} with model_kwargs "
                             f"{c.model_kwargs.to_dict()!r} does not build for "
                             f"{'x'.join(map(str, shape))} images: {problem}")

    def _check_length(self) -> None:
        c, n = self.config, self.input.num_train
        if n < c.batch_size:
            raise ValueError(f"config.batch_size = {c.batch_size}: the {c.dataset} training "
                             f"split holds only {n} examples")
        if self.total_steps >= INT_LIMIT:
            raise ValueError(f"config.num_epochs = {c.num_epochs} / max_steps = {c.max_steps}:"
                             f" {self.total_steps} steps, more than a step counter holds")
        warmup = int(c.warmup_epochs * self.steps_per_epoch)
        if warmup >= self.total_steps:
            raise ValueError(f"config.warmup_epochs = {c.warmup_epochs}: {warmup} warmup steps, "
                             f"not fewer than the run's {self.total_steps} steps")
        if c.profile_steps and c.profile_steps[-1] > self.total_steps:
            raise ValueError(f"config.profile_steps = {tuple(c.profile_steps)}: beyond the "
                             f"run's {self.total_steps} steps (nothing would be traced)")

    def data_record(self) -> dict:
        """What config.json records of the data read: a resume on other data (another
        `data_dir` holding more examples or other ones) changes what the run computes."""
        return dict(num_train=self.input.num_train, num_eval=self.input.num_eval,
                    fingerprint=self.input.fingerprint)

    def facts(self) -> dict:
        """What this process read and derived from it: every process of a run must hold
        the same (the loop's length comes from these)."""
        return dict(self.data_record(), steps_per_epoch=self.steps_per_epoch,
                    total_steps=self.total_steps, devices=jax.device_count())

    def _fresh_state(self) -> steps.TrainState:
        variables = self.model.init(jax.random.key(self.config.seed),
                                    jnp.zeros((1, *data.image_shape(self.config))))
        return steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                batch_stats=variables.get("batch_stats", {}),
                                opt_state=self.tx.init(variables["params"]))

    def init_state(self) -> steps.TrainState:
        """A fresh state, or the `init_from` weights with a fresh classifier where theirs
        has another shape (another num_classes); replicated over the mesh."""
        state = jax.jit(self._fresh_state, out_shardings=self.replicated)()
        if self.config.init_from:
            fresh = {"params": state.params, "batch_stats": state.batch_stats}
            classifier = pretrained.classifier_paths(self.model, data.image_shape(self.config))
            variables, replaced = pretrained.fit_variables(
                load_init_from(self.config.init_from, self.config.model), fresh, classifier,
                self.config.init_from)
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
        """This process's rows as global arrays, after checking the labels on the host."""
        check_labels(local["label"], self.info.num_classes, f"a batch of {self.config.dataset}")
        return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
                for k, v in local.items()}

    def batches(self, iterator, what: str):
        """`iterator`'s batches; a failure to read them names the damaged files found."""
        try:
            yield from iterator
        except Exception as error:
            damaged = self.input.damaged_files()
            raise ValueError(f"reading {what} of {self.config.dataset} fails: "
                             f"{type(error).__name__}: {error}"
                             + (f"; damaged: {'; '.join(damaged)}" if damaged else "")) from None

    def evaluate(self, state) -> dict:
        """Top-1/top-5 accuracy and loss over the whole eval split, each example once."""
        totals = None
        for batch in self.batches(self.input.eval_batches(
                self.eval_batch_size, jax.process_index(), jax.process_count()),
                "the evaluation split"):
            sums = self.eval_step(state, self.global_batch(batch))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = totals["count"]
        return dict(eval_top1=totals["top1"] / count, eval_top5=totals["top5"] / count,
                    eval_loss=totals["loss"] / count, eval_count=count)


def load_init_from(path: str, model: str) -> dict:
    """params and batch_stats of `model` from `lip-jax convert` output or from a work
    directory's newest intact checkpoint, as NumPy arrays."""
    directory = epath.Path(path)
    if pretrained.converted_model(directory) is not None:
        return pretrained.load_variables(directory, model)
    if (directory / "config.json").is_file() and (directory / "checkpoints").is_dir():
        saved = read_record(directory / "config.json").get("model", DEFAULTS["model"])
        if saved != model:
            raise ValueError(f"{directory} holds weights of {saved!r}, not {model!r}")
        return Checkpoints(directory / "checkpoints").read_variables()
    raise FileNotFoundError(f"config.init_from = {path!r} holds neither converted weights "
                            "(model.json) nor a training run (config.json and checkpoints/)")


def _read(config):
    """`data.input_pipeline(config)`; a library's failure to read (a gs:// path without
    network, a file of another kind) as an OSError naming the data."""
    try:
        return data.input_pipeline(config)
    except (OSError, ValueError, ImportError):
        raise  # lip_jax's checks and the OS name what is wrong
    except Exception as error:
        where = config.data_dir or "its default place"
        raise OSError(f"reading {config.dataset} from {where} fails: {type(error).__name__}: "
                      f"{' '.join(str(error).split())}") from None
