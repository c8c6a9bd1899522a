"""Model variables on disk: read from `lip-jax convert` output (an orbax checkpoint plus
model.json) or from a lip-jax work directory (its newest checkpoint), and fitted to a
model whose classifier may differ (fine-tuning on another number of classes)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

KEYS = ("params", "batch_stats")


def save_variables(directory, model: str, variables: dict) -> None:
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", variables, force=True)
    (directory / "model.json").write_text(json.dumps({"model": model}))


def load_variables(directory, model: str | None = None) -> dict:
    """`{"params", "batch_stats"}` as NumPy arrays, from `save_variables` output or from
    the newest checkpoint of a training work directory. With `model`, checks that they
    belong to it."""
    directory = Path(directory).absolute()
    if (directory / "model.json").is_file():
        saved = json.loads((directory / "model.json").read_text())["model"]
        read = lambda: _restore(ocp.PyTreeCheckpointer(), directory / "variables")
    elif (directory / "config.json").is_file() and (directory / "checkpoints").is_dir():
        saved = json.loads((directory / "config.json").read_text())["model"]
        read = lambda: _restore_newest(directory / "checkpoints")
    else:
        raise FileNotFoundError(f"{directory} holds neither converted weights (model.json) "
                                "nor a training run (config.json and checkpoints/)")
    if model is not None and saved != model:
        raise ValueError(f"{directory} holds weights of {saved!r}, not {model!r}")
    return read()


def _numpy_args(metadata):
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)


def _restore(checkpointer, path) -> dict:
    tree = checkpointer.metadata(path).item_metadata.tree
    target = {k: tree[k] for k in KEYS}
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=_numpy_args(target), partial_restore=True))


def _restore_newest(directory) -> dict:
    """params and batch_stats of the newest checkpoint (the optimizer state is not read)."""
    with ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler()) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        tree = manager.item_metadata(step).tree
        target = {k: tree[k] for k in KEYS}
        return manager.restore(step, args=ocp.args.PyTreeRestore(
            target, restore_args=_numpy_args(target), partial_restore=True))


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
    """`loaded` where its shapes match `fresh`, `fresh` where they differ in a path of
    `replaceable` (such as the classifier for another num_classes); returns the variables
    and the replaced paths. Raises ValueError with the count of all other missing,
    unexpected or mis-shaped variables, naming the first five."""
    loaded_leaves, fresh_leaves = dict(_leaves(loaded)), dict(_leaves(fresh))
    replaced = [p for p, v in fresh_leaves.items()
                if p in loaded_leaves and np.shape(loaded_leaves[p]) != np.shape(v)]
    problems = ([f"{p}: missing" for p in fresh_leaves.keys() - loaded_leaves.keys()]
                + [f"{p}: unexpected" for p in loaded_leaves.keys() - fresh_leaves.keys()]
                + [f"{p}: {np.shape(loaded_leaves[p])} vs the model's "
                   f"{np.shape(fresh_leaves[p])}" for p in replaced if p not in replaceable])
    if problems:
        raise ValueError(f"weights in {source} do not fit the model ({len(problems)} "
                         f"variables): {'; '.join(sorted(problems)[:5])}")
    leaves = [v if p in replaced else loaded_leaves[p] for p, v in fresh_leaves.items()]
    return jax.tree.unflatten(jax.tree.structure(fresh), leaves), replaced


def _leaves(tree) -> list:
    return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(tree)]
