"""Training configuration: one table of fields (name, default, kind, meaning), Python config
files, a run's config.json, command-line overrides, and the checks that run before
anything compiles."""

import ast
import dataclasses
import difflib
import importlib.util
import json

import ml_collections
from etils import epath

from lip_jax.data import DATASET_FIELDS, DATASETS
from lip_jax.models import create_model, list_models

FIELDS = (
    # (name, default, kind, meaning); the default's type is the field's type; KINDS below
    ("model", "lip_cnn", "math", "model name (`lip-jax models` lists them)"),
    ("model_kwargs", {}, "math", "extra create_model arguments: {'widths': (8, 16)}"),
    ("dtype", "float32", "math", 'compute dtype: "float32" or "bfloat16"'),
    ("init_from", "", "math", "start from `lip-jax convert` output or a work directory"),
    ("dataset", "fashion_mnist", "math", " or ".join(map(repr, DATASETS))),
    ("data_dir", "", "input", "IDX files or a TFDS data_dir (imagenet2012: TFDS)"),
    ("data_format", "array_record", "math",
     'imagenet2012 files: "array_record" or "tfrecord"'),
    ("image_size", 224, "math", "imagenet2012 crop; eval resizes to image_size * 8 / 7"),
    ("num_threads", 8, "input", "input worker threads per process"),
    ("num_workers", 0, "input", "input worker processes (grain); each runs num_threads"),
    ("batch_size", 64, "math", "global batch, across all devices and hosts"),
    ("eval_batch_size", 500, "cadence", "global evaluation batch"),
    ("num_epochs", 4.0, "math", "length of training"),
    ("max_steps", -1, "math", "> 0: stop after this many steps instead"),
    ("optimizer", "nesterov", "math", '"sgd" (momentum) or "nesterov"'),
    ("learning_rate", 0.4, "math", "peak rate at lr_reference_batch, scaled linearly"),
    ("lr_reference_batch", 256, "math", "the batch size learning_rate is given for"),
    ("momentum", 0.9, "math", "SGD momentum"),
    ("weight_decay", 5e-4, "math", "L2 on all parameters (official recipe: 1e-4)"),
    ("schedule", "cosine", "math", '"step" (x decay_factor at decay_epochs) or "cosine"'),
    ("decay_epochs", (30, 60, 80), "math", 'epochs at which the "step" schedule decays'),
    ("decay_factor", 0.1, "math", 'factor of each "step" decay'),
    ("warmup_epochs", 0.0, "math", "linear warmup from 0, in epochs"),
    ("label_smoothing", 0.0, "math", "in [0, 1)"),
    ("bn_group_size", 0, "math", "BatchNorm statistics per G examples (paper: 32); 0: all"),
    ("seed", 0, "math", "initialisation and data order"),
    ("log_every_steps", 50, "cadence", "write training metrics every this many steps"),
    ("eval_every_epochs", 1.0, "cadence", "evaluate every this many epochs and at the end"),
    ("checkpoint_every_secs", 120.0, "cadence", "save at least this often and at the end"),
    ("keep_checkpoints", 3, "cadence", "number of newest checkpoints kept"),
    ("profile_steps", (), "cadence", "(first, last) steps to trace; N = (N, N); () = off"),
    ("distributed", False, "launch", "call jax.distributed.initialize() (multi-host)"),
    ("coordinator_address", "", "launch", '"host:port" where the cluster does not say'),
    ("num_processes", -1, "launch", "with coordinator_address: number of processes"),
    ("process_id", -1, "launch", "with coordinator_address: this process's index"),
    ("initialization_timeout", 300, "launch",
     "seconds for every process to join and agree on the run"),
    ("heartbeat_timeout", 100, "launch", "seconds after which a silent process counts as dead"),
)
KINDS = {  # what a field is to a run's record (config.json) when the run resumes
    "math": "what the run computes: a resume may not change it (--allow-config-change: "
            "it may, recorded)",
    "cadence": "logging, evaluation, checkpoints: a resume may change it (recorded in "
               "config.json)",
    "input": "where and how data is read, not what: a resume may change it (recorded)",
    "launch": "how this process joins the others: not part of the run's record",
}
DEFAULTS = {name: default for name, default, _, _ in FIELDS}
KIND = {name: kind for name, _, kind, _ in FIELDS}
RECORDED = tuple(name for name in DEFAULTS if KIND[name] != "launch")
CHANGES = "changes"  # config.json's list of accepted changes: {step, field, old, new}
DATA = "data"  # config.json's record of the data read: {num_train, num_eval, fingerprint}
FLAGS = {"workdir": "--workdir DIR", "config": "--config FILE", "verbose": "--verbose",
         "allow_config_change": "--allow-config-change"}  # command-line flags, not fields
HELP = "`lip-jax train --help` lists the fields"
INT_LIMIT = 2 ** 31  # integer fields fit int32, as step counters and seeds on devices do
# create_model arguments that other fields set
SET_ELSEWHERE = {"num_classes": "the dataset", "dtype": "config.dtype",
                 "bn_group_size": "config.bn_group_size", "parent": "Flax", "name": "Flax"}


def default_config() -> ml_collections.ConfigDict:
    """The default job: LIP CNN on Fashion-MNIST, offline, minutes on 2 CPU cores."""
    return ml_collections.ConfigDict(DEFAULTS)


def describe_config() -> str:
    """Every field with its default and meaning, one line each, under a heading per kind
    (for `--help`)."""
    name_width = max(len(name) for name in DEFAULTS)
    value_width = max(len(repr(default)) for default in DEFAULTS.values())
    lines = []
    for kind, meaning in KINDS.items():
        lines.append(f"{kind}: {meaning}")
        lines += [f"  {name:<{name_width}}  {default!r:<{value_width}}  {text}"
                  for name, default, k, text in FIELDS if k == kind]
    return "\n".join(lines)


def load_config(path: str | None, overrides: list[str],
                base: str | None = None) -> ml_collections.ConfigDict:
    """The defaults, updated in turn by `base` (a run's `config.json`: its recorded fields),
    by `get_config()` of the Python file `path`, and by overrides `--config.field=value`
    (values parsed as Python literals; for text fields the text itself). Raises ValueError
    naming the field (and file) of the first unknown field, wrong type or bad value."""
    values = dict(DEFAULTS)
    if base:
        _update(values, {k: v for k, v in read_record(base).items()
                         if k in DEFAULTS and KIND[k] != "launch"}, base)
    if path:
        _update(values, _get_config(path), path)
    for item in overrides:
        _update(values, _override(item, values), "the command line")
    if len(values["profile_steps"]) == 1:  # --config.profile_steps=N traces step N
        values["profile_steps"] *= 2
    config = ml_collections.ConfigDict(values)
    check_config(config)
    return config


def read_config(path) -> ml_collections.ConfigDict:
    """A config written by the training loop (`workdir/config.json`)."""
    return load_config(None, [], base=str(path))


def read_record(path) -> dict:
    """The JSON object of a run's `config.json` as written (fields and `changes`); raises
    ValueError naming the file if it is not one."""
    try:
        record = json.loads(_existing(path, "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a config.json (JSON): {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not a config.json "
                         "object of fields")
    unknown = [k for k in record if k not in DEFAULTS and k not in (CHANGES, DATA)]
    if unknown:
        raise ValueError(f"unknown config field {unknown[0]!r} in {path}"
                         f"{_did_you_mean(unknown[0], DEFAULTS)}; {HELP}")
    if not isinstance(record.get(CHANGES, []), list):
        raise ValueError(f"{path}: {CHANGES!r} must be a list of changes")
    return record


def record(config, changes=(), data: dict | None = None) -> str:
    """`config.json` text: the recorded fields of `config`, the list of `changes` and, if
    given, the `data` read."""
    values = as_json(config)
    return json.dumps({**{k: values[k] for k in RECORDED}, CHANGES: list(changes),
                       **({DATA: data} if data is not None else {})}, indent=1)


def as_json(config) -> dict:
    """The config's fields as JSON values (tuples become lists), as config.json holds them."""
    return json.loads(config.to_json())


def _existing(path, what: str) -> epath.Path:
    """`path` (local, or a cloud URL such as a gs:// run's config.json) if it is a file."""
    if epath.Path(path).is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return epath.Path(path)


def _get_config(path: str) -> dict:
    spec = importlib.util.spec_from_file_location("lip_jax_user_config",
                                                  str(_existing(path, "config file")))
    if spec is None:
        raise ValueError(f"config file {path} is not a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config() if hasattr(module, "get_config") else None
    except Exception as error:  # the user's file: any error there is theirs to fix
        raise ValueError(f"config file {path} fails: {type(error).__name__}: {error}") from None
    if config is None and not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    if not isinstance(config, dict):
        raise ValueError(f"get_config() of {path} returned {type(config).__name__}, not a "
                         "ConfigDict or dict")
    return config


def _override(item: str, values: dict) -> dict:
    """`--config.field=value` as `{field: value}`; `--config.model_kwargs.key=value` sets one
    create_model argument."""
    if not item.startswith("--config.") or "=" not in item:
        raise ValueError(f"override {item!r} is not of the form --config.field=value")
    field, text = item[len("--config."):].split("=", 1)
    name, *key = field.split(".", 1)
    value = _literal(text)
    if isinstance(DEFAULTS.get(name), str) and not isinstance(value, str):
        value = text  # a text field takes the text as it is: --config.data_dir=2024
    if key and name == "model_kwargs":
        value = {**values[name], key[0]: value}
    elif key:
        raise ValueError(f"config.{name} has no field {key[0]!r}")
    return {name: value}


def _literal(text: str):
    """A Python literal, `true`/`false`, or else the text itself."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _update(values: dict, new, source: str) -> None:
    """Sets `values[name]` for each field of `new`, converted to the field's type; raises
    ValueError naming `source` for an unknown field or a value of the wrong type."""
    for name, value in new.items():
        if name in FLAGS:
            raise ValueError(f"{name!r} in {source} is not a config field: pass "
                             f"{FLAGS[name]} to `lip-jax train`")
        if name not in DEFAULTS:
            raise ValueError(f"unknown config field {name!r} in {source}"
                             f"{_did_you_mean(name, DEFAULTS)}; {HELP}")
        converted = _convert(DEFAULTS[name], value)
        if converted is None:
            raise ValueError(f"config.{name} = {value!r} (from {source}): must be "
                             f"{_TYPE_NAMES[type(DEFAULTS[name])]}")
        values[name] = converted


_TYPE_NAMES = {bool: "True or False", int: "an integer of magnitude below 2**31",
               float: "a finite number", str: "a string", tuple: "a tuple of finite numbers",
               dict: "a dict of create_model arguments (names to Python literals)"}


def _convert(default, value):
    """`value` as the type of `default` (ints widen to floats, lists and single numbers
    become tuples), or None if it is not of that type: integers must fit int32 and
    numbers be finite."""
    if isinstance(default, tuple):
        value = (value,) if _is_number(value) else value
        if isinstance(value, (tuple, list)) and all(map(_is_number, value)):
            return tuple(value)
    elif isinstance(default, dict):  # model_kwargs; config.json turns tuples into lists
        if (isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value)
                and _is_json(value)):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    elif isinstance(default, float):
        if _is_number(value):
            return float(value)
    elif isinstance(default, int) and not isinstance(default, bool):
        if type(value) is int and abs(value) < INT_LIMIT:
            return value
    elif type(value) is type(default):  # bool, str exactly: True is no batch size
        return value
    return None


def _is_json(value) -> bool:
    """Whether `value` survives config.json (numbers finite)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value) -> bool:
    """An int or a finite float (of magnitude below 1e300: no NaN, inf or overflow)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300


def check_config(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field; runs before anything compiles."""
    checks = [
        ("model", c.model in list_models(),
         f"unknown model{_did_you_mean(c.model, list_models())}; known: "
         f"{', '.join(list_models())}"),
        ("dtype", c.dtype in ("float32", "bfloat16"), 'must be "float32" or "bfloat16"'),
        ("dataset", c.dataset in DATASETS, f"must be {' or '.join(map(repr, DATASETS))}"),
        ("data_format", c.data_format in ("array_record", "tfrecord"),
         'must be "array_record" or "tfrecord"'),
        ("image_size", c.image_size > 0, "must be > 0"),
        ("num_threads", c.num_threads > 0, "must be > 0"),
        ("num_workers", c.num_workers >= 0, "must be >= 0"),
        ("batch_size", c.batch_size > 0, "must be > 0"),
        ("eval_batch_size", c.eval_batch_size > 0, "must be > 0"),
        ("num_epochs", c.num_epochs > 0, "must be > 0"),
        ("max_steps", c.max_steps == -1 or c.max_steps > 0, "must be > 0, or -1 (off)"),
        ("learning_rate", c.learning_rate > 0, "must be > 0"),
        ("lr_reference_batch", c.lr_reference_batch > 0, "must be > 0"),
        ("momentum", 0 <= c.momentum < 1, "must be in [0, 1)"),
        ("optimizer", c.optimizer in ("sgd", "nesterov"), 'must be "sgd" or "nesterov"'),
        ("schedule", c.schedule in ("step", "cosine"), 'must be "step" or "cosine"'),
        ("weight_decay", c.weight_decay >= 0, "must be >= 0"),
        ("decay_epochs", all(e > 0 for e in c.decay_epochs), "must be epochs > 0"),
        ("decay_factor", c.decay_factor > 0, "must be > 0"),
        ("label_smoothing", 0 <= c.label_smoothing < 1, "must be in [0, 1)"),
        ("warmup_epochs", 0 <= c.warmup_epochs < c.num_epochs, "must be in [0, num_epochs)"),
        ("bn_group_size", c.bn_group_size >= 0, "must be >= 0"),
        ("bn_group_size", c.bn_group_size == 0 or c.batch_size % c.bn_group_size == 0,
         f"must divide batch_size ({c.batch_size})"),
        ("seed", c.seed >= 0, "must be >= 0"),
        ("log_every_steps", c.log_every_steps > 0, "must be > 0"),
        ("eval_every_epochs", c.eval_every_epochs > 0, "must be > 0"),
        ("checkpoint_every_secs", c.checkpoint_every_secs > 0, "must be > 0"),
        ("keep_checkpoints", c.keep_checkpoints >= 1, "must be >= 1"),
        ("profile_steps", c.profile_steps == () or (
            len(c.profile_steps) == 2 and all(isinstance(s, int) for s in c.profile_steps)
            and 1 <= c.profile_steps[0] <= c.profile_steps[1]),
         "must be () (off), a step N >= 1, or steps (first, last) with 1 <= first <= last"),
        *_cluster_checks(c),
    ]
    for field, ok, message in checks:
        if not ok:
            raise ValueError(f"config.{field} = {c[field]!r}: {message}")
    reads = getattr(DATASETS[c.dataset], "CONFIG_FIELDS", DATASET_FIELDS)
    for field in DATASET_FIELDS:
        if field not in reads and c[field] != DEFAULTS[field]:
            raise ValueError(f"config.{field} = {c[field]!r}: {c.dataset} does not read it "
                             f"(it reads {', '.join(reads) or 'no such field'})")
    _check_model_kwargs(c)


def _cluster_checks(c) -> list:
    """The launch fields: consistent with each other and with `distributed`."""
    host, _, port = c.coordinator_address.rpartition(":")
    set_alone = [f for f in ("coordinator_address", "num_processes", "process_id")
                 if c[f] != DEFAULTS[f]]
    return [
        ("distributed", c.distributed or not set_alone,
         f"config.{set_alone[0] if set_alone else ''} is set: set --config.distributed=True "
         "too (or leave it unset)"),
        ("coordinator_address", not c.coordinator_address or (
            host.strip("[]") and port.isdigit() and 0 < int(port) < 65536),
         'must be "host:port" with a port in 1..65535'),
        ("num_processes", c.num_processes == -1 or c.num_processes > 0,
         "must be > 0, or -1 (the cluster says)"),
        ("process_id", c.process_id >= -1, "must be >= 0, or -1 (the cluster says)"),
        ("process_id", c.process_id < c.num_processes or -1 in (c.process_id, c.num_processes),
         f"must be below config.num_processes ({c.num_processes})"),
        ("num_processes", not c.coordinator_address or -1 not in (c.num_processes, c.process_id),
         "config.coordinator_address needs config.num_processes and config.process_id"),
        ("initialization_timeout", c.initialization_timeout > 0, "must be > 0 seconds"),
        ("heartbeat_timeout", c.heartbeat_timeout > 0, "must be > 0 seconds"),
    ]


def _check_model_kwargs(c) -> None:
    """Each create_model argument is a field of the model that no other setting decides."""
    model = create_model(c.model, num_classes=DATASETS[c.dataset].INFO.num_classes)
    fields = [f.name for f in dataclasses.fields(model) if f.name not in SET_ELSEWHERE]
    for key in c.model_kwargs:
        if key in SET_ELSEWHERE:
            raise ValueError(f"config.model_kwargs sets {key!r}, which {SET_ELSEWHERE[key]} "
                             "decides")
        if key not in fields:
            raise ValueError(f"config.model_kwargs = {c.model_kwargs.to_dict()!r}: "
                             f"{c.model} has no argument {key!r}"
                             f"{_did_you_mean(key, fields)}; its arguments: "
                             f"{', '.join(fields)}")
