"""Model variables on disk (from `lip-jax convert`): an orbax checkpoint plus model.json."""

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(directory, model: str, variables: dict) -> None:
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", variables, force=True)
    (directory / "model.json").write_text(json.dumps({"model": model}))


def load_variables(directory, model: str | None = None, like=None) -> dict:
    """`{"params", "batch_stats"}` saved by `save_variables`. With `model`, checks that they
    belong to it; with `like` (anything with params and batch_stats), checks every shape."""
    directory = Path(directory).absolute()
    meta = directory / "model.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{directory} holds no converted weights (no model.json)")
    saved = json.loads(meta.read_text())["model"]
    if model is not None and saved != model:
        raise ValueError(f"{directory} holds weights of {saved!r}, not {model!r}")
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(directory / "variables")
    if like is not None:
        expected = {"params": like.params, "batch_stats": like.batch_stats}
        bad = [f"{jax.tree_util.keystr(path)}: {np.shape(v)} vs {np.shape(e)}"
               for (path, v), e in zip(jax.tree_util.tree_flatten_with_path(variables)[0],
                                       jax.tree.leaves(expected))
               if np.shape(v) != np.shape(e)]
        if bad or jax.tree.structure(variables) != jax.tree.structure(expected):
            raise ValueError(f"weights in {directory} do not fit the model "
                             f"(e.g. num_classes): {'; '.join(bad[:5]) or 'different layers'}")
    return variables
