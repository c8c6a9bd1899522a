"""Writes a PNG of what LIP attends to: each LIP layer's importance map over eval images.

    python experiments/show_importance.py --workdir DIR [--out importance.png] [--images 8]

DIR is a `lip-jax train` work directory (its config.json and newest checkpoint). Rows are
images; columns the input, then one map per LIP layer (red = important), each upsampled to
the input size and laid over the grey input. Maps use `normalize` (see
`lip_jax.importance.importance_maps`).
"""

import argparse
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from lip_jax.importance import importance_maps
from lip_jax.train.config import read_config
from lip_jax.train.loop import latest_state
from lip_jax.train.steps import normalize


def overlay(gray: np.ndarray, heat: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) gray in [0, 1] and (h, w) heat in [0, 1] -> (H*scale, W*scale, 3) uint8."""
    factor = -(-gray.shape[0] // heat.shape[0]), -(-gray.shape[1] // heat.shape[1])
    heat = np.kron(heat, np.ones(factor))[:gray.shape[0], :gray.shape[1]]
    rgb = np.stack([0.4 * gray + 0.6 * heat, 0.4 * gray, 0.4 * gray + 0.2 * (1 - heat)], -1)
    return np.kron(np.clip(rgb * 255, 0, 255), np.ones((scale, scale, 1))).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--out", default=Path("importance.png"), type=Path)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--normalize", choices=("image", "window"), default="image")
    parser.add_argument("--scale", type=int, default=4, help="pixels per input pixel")
    args = parser.parse_args(argv)
    config = read_config(args.workdir / "config.json")
    trainer, state = latest_state(config, args.workdir)
    images = next(trainer.input.eval_batches(args.images, 0, 1))["image"]
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    maps = jax.device_get(importance_maps(
        trainer.model, variables, normalize(images, trainer.info.mean, trainer.info.std),
        args.normalize))
    gray = images.mean(-1) / 255.0
    rows = []
    for i in range(len(images)):
        tiles = [np.kron(np.repeat(gray[i][..., None] * 255, 3, -1),
                         np.ones((args.scale, args.scale, 1))).astype(np.uint8)]
        for layer in maps.values():
            heat = layer[i] / max(float(layer[i].max()), 1e-12)
            tiles.append(overlay(gray[i], heat, args.scale))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                                    for t in tiles], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"wrote {args.out}: {len(images)} images x [input, {', '.join(maps)}] "
          f"(step {int(state.step)})")


if __name__ == "__main__":
    main()
