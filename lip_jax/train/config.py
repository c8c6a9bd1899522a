"""Training configuration: defaults, Python config files, command-line overrides, checks."""

import ast
import importlib.util
import json
from pathlib import Path

import ml_collections

from lip_jax.models import list_models


def default_config() -> ml_collections.ConfigDict:
    """The default job: LIP CNN on Fashion-MNIST, offline, minutes on 2 CPU cores."""
    c = ml_collections.ConfigDict()
    c.model = "lip_cnn"
    c.model_kwargs = ml_collections.ConfigDict()  # extra create_model arguments
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16"
    c.init_from = ""  # a directory written by `lip-jax convert`: start from its weights

    c.dataset = "fashion_mnist"  # or "imagenet2012"
    c.data_dir = ""  # fashion_mnist: IDX files or a TFDS data_dir; imagenet2012: TFDS data_dir
    c.data_format = "array_record"  # imagenet2012 files: "array_record" (grain) or "tfrecord"
    c.image_size = 224  # imagenet2012 crop size (eval resizes to image_size * 8 / 7)
    c.num_threads = 8  # input worker threads per process

    c.batch_size = 64  # global, across all devices and hosts
    c.eval_batch_size = 500
    c.num_epochs = 4.0
    c.max_steps = -1  # > 0: stop after this many steps (smoke tests)

    c.optimizer = "nesterov"  # "sgd" (momentum) or "nesterov"
    c.learning_rate = 0.4  # for a batch of `lr_reference_batch`, scaled linearly
    c.lr_reference_batch = 256
    c.momentum = 0.9
    c.weight_decay = 5e-4  # on all parameters (the official recipe uses 1e-4)
    c.schedule = "cosine"  # "step" (x`decay_factor` at `decay_epochs`) or "cosine"
    c.decay_epochs = (30, 60, 80)
    c.decay_factor = 0.1
    c.warmup_epochs = 0.0
    c.label_smoothing = 0.0

    c.seed = 0
    c.log_every_steps = 50
    c.eval_every_epochs = 1.0
    c.checkpoint_every_secs = 120.0
    c.keep_checkpoints = 3
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    c.coordinator_address = ""  # only where the cluster does not say: "host:port"
    c.num_processes = -1
    c.process_id = -1
    return c


def load_config(path: str | None, overrides: list[str]) -> ml_collections.ConfigDict:
    """The default config, updated by `get_config()` of a Python file, then by overrides
    `--config.field=value` (values parsed as Python literals, else taken as strings)."""
    config = default_config()
    if path:
        spec = importlib.util.spec_from_file_location("lip_jax_user_config", path)
        if spec is None or not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} not found")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config.update(module.get_config())
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"override {item!r} is not of the form --config.field=value")
        field, text = item[len("--config."):].split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node, *path = [config] + field.split(".")
        for name in path[:-1]:
            node = node[name]
        if path[-1] not in node:
            raise ValueError(f"unknown config field {field!r}")
        current = node[path[-1]]
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        node[path[-1]] = value
    check_config(config)
    return config


def read_config(path) -> ml_collections.ConfigDict:
    """A config written by the training loop (`workdir/config.json`)."""
    config = default_config()
    config.update(json.loads(Path(path).read_text()))
    return config


def check_config(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field; runs before anything compiles."""
    checks = [
        ("model", c.model in list_models(), f"unknown model; known: {', '.join(list_models())}"),
        ("dtype", c.dtype in ("float32", "bfloat16"), 'must be "float32" or "bfloat16"'),
        ("dataset", c.dataset in ("fashion_mnist", "imagenet2012", "small_objects"),
         'must be "fashion_mnist", "imagenet2012" or "small_objects"'),
        ("data_format", c.data_format in ("array_record", "tfrecord"),
         'must be "array_record" or "tfrecord"'),
        ("batch_size", isinstance(c.batch_size, int) and c.batch_size > 0, "must be > 0"),
        ("eval_batch_size", isinstance(c.eval_batch_size, int) and c.eval_batch_size > 0,
         "must be > 0"),
        ("num_epochs", c.num_epochs > 0, "must be > 0"),
        ("learning_rate", c.learning_rate > 0, "must be > 0"),
        ("optimizer", c.optimizer in ("sgd", "nesterov"), 'must be "sgd" or "nesterov"'),
        ("schedule", c.schedule in ("step", "cosine"), 'must be "step" or "cosine"'),
        ("weight_decay", c.weight_decay >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= c.label_smoothing < 1, "must be in [0, 1)"),
        ("warmup_epochs", 0 <= c.warmup_epochs < c.num_epochs, "must be in [0, num_epochs)"),
        ("checkpoint_every_secs", c.checkpoint_every_secs > 0, "must be > 0"),
        ("keep_checkpoints", c.keep_checkpoints >= 1, "must be >= 1"),
    ]
    for field, ok, message in checks:
        if not ok:
            raise ValueError(f"config.{field} = {c[field]!r}: {message}")
