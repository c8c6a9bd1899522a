"""Model variables on disk: `lip-jax convert` output (an orbax checkpoint, its checksums
and model.json), read back as NumPy arrays, and fitted to a model whose classifier may
differ (fine-tuning on another number of classes). A training work directory's newest
intact checkpoint is read by `lip_jax.train.checkpoint`."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lip_jax import checksums
from lip_jax.convert import finite_floats

KEYS = ("params", "batch_stats")


def save_variables(directory, model: str, variables: dict) -> None:
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", variables, force=True)
    checksums.write(directory / "variables")
    (directory / "model.json").write_text(json.dumps({"model": model}))


def converted_model(directory) -> str | None:
    """The model named by `directory/model.json` (`save_variables` output), else None."""
    path = Path(directory) / "model.json"
    if not path.is_file():
        return None
    try:
        model = json.loads(path.read_text())["model"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a model.json written by `lip-jax convert`") from None
    if not isinstance(model, str) or not model:
        raise ValueError(f"{path} names the model {model!r}, expected a model name such as "
                         "'lip_resnet50'")
    return model


def load_variables(directory, model: str | None = None) -> dict:
    """`{"params", "batch_stats"}` as NumPy arrays from `save_variables` output, after
    checking their checksums. With `model`, checks that they belong to it. Weights
    without `variables/checksums.json` are refused as damaged: `save_variables` writes it
    before model.json, so only a change after saving, or a conversion by a lip-jax older
    than checksums, lacks it (converting again writes it)."""
    directory = Path(directory).absolute()
    saved = converted_model(directory)
    if saved is None:
        raise FileNotFoundError(f"{directory} holds no converted weights (model.json)")
    if model is not None and saved != model:
        raise ValueError(f"{directory} holds weights of {saved!r}, not {model!r}")
    problem = checksums.mismatch(directory / "variables")
    if problem:
        raise ValueError(f"weights in {directory / 'variables'} are damaged: {problem} "
                         "(`lip-jax convert` writes them again)")
    try:
        return read_variables(directory / "variables")
    except Exception as error:  # truncated or foreign files
        raise ValueError(f"weights in {directory} do not load: {error}") from None


def read_variables(path) -> dict:
    """params and batch_stats of the orbax checkpoint item at `path` as NumPy arrays, in
    their saved shapes (an optimizer state beside them is not read)."""
    handler = ocp.PyTreeCheckpointHandler()  # no barrier: callers agree on the outcome
    tree = handler.metadata(path).tree
    target = {k: tree[k] for k in KEYS if k in tree}
    return handler.restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target),
        partial_restore=True))


def classifier_paths(module, input_shape) -> set[str]:
    """Paths (`jax.tree_util.keystr`) of the variables whose shape depends on
    `module.num_classes`: the classifier. Computes only shapes."""
    def shapes(m):
        variables = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, *input_shape)))
        return {jax.tree_util.keystr(p): v.shape
                for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    ours, other = shapes(module), shapes(module.clone(num_classes=module.num_classes + 1))
    return {path for path, shape in ours.items() if other[path] != shape}


def fit_variables(loaded: dict, fresh: dict, replaceable: set[str],
                  source) -> tuple[dict, list[str]]:
    """`loaded` where its shapes match `fresh`, cast to `fresh`'s dtypes; `fresh` where they
    differ in a path of `replaceable` (such as the classifier for another num_classes);
    returns the variables and the replaced paths. A loaded value that is not a finite real
    float array raises `CheckpointError` (`float_leaves`); any other missing, unexpected or
    mis-shaped variables a ValueError with their count, naming the first five."""
    loaded_leaves, fresh_leaves = float_leaves(loaded, source), dict(_leaves(fresh))
    replaced = [p for p, v in fresh_leaves.items()
                if p in loaded_leaves and np.shape(loaded_leaves[p]) != np.shape(v)]
    problems = ([f"{p}: missing" for p in fresh_leaves.keys() - loaded_leaves.keys()]
                + [f"{p}: unexpected" for p in loaded_leaves.keys() - fresh_leaves.keys()]
                + [f"{p}: {np.shape(loaded_leaves[p])} vs the model's "
                   f"{np.shape(fresh_leaves[p])}" for p in replaced if p not in replaceable])
    if problems:
        raise ValueError(f"weights in {source} do not fit the model ({len(problems)} "
                         f"variables): {'; '.join(sorted(problems)[:5])}")
    leaves = [v if p in replaced else loaded_leaves[p].astype(v.dtype)
              for p, v in fresh_leaves.items()]
    return jax.tree.unflatten(jax.tree.structure(fresh), leaves), replaced


def float_leaves(tree, source) -> dict[str, np.ndarray]:
    """{path (`jax.tree_util.keystr`): leaf as a NumPy array} of `tree`, every leaf checked
    first: one that is not a finite real float array (`lip_jax.convert.finite_floats`)
    raises `CheckpointError` naming its path and `source`."""
    return {path: finite_floats(f"{path} of {source}", value) for path, value in _leaves(tree)}


def _leaves(tree) -> list:
    return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(tree)]
