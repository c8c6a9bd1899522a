"""Writes a PNG of what LIP attends to: each LIP layer's importance map over eval images.

    python experiments/show_importance.py --workdir DIR [--out importance.png] [--images 8]
        [--config.field=value ...]

DIR is a `lip-jax train` work directory: its config.json (updated by any
`--config.field=value`, e.g. a moved `data_dir`) and its newest checkpoint. Rows are eval
images; columns the input, then one map per LIP layer at that layer's resolution, drawn
with the colour scale on the right over the dimmed input. Maps use `--normalize` (see
`lip_jax.importance.importance_maps`), each divided by its image's maximum.
"""

import argparse
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lip_jax.cli import run_config
from lip_jax.importance import importance_maps
from lip_jax.train.config import load_config
from lip_jax.train.loop import latest_state
from lip_jax.train.steps import normalize

# Anchors of matplotlib's "inferno" colour map (perceptually uniform, dark -> bright).
INFERNO = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                    (245, 125, 21), (250, 193, 39), (252, 255, 164)], np.float64) / 255
PAD, FONT_SIZE = 4, 14
LEGEND = {"image": "importance exp(logit) relative to the image's most important pixel",
          "window": "each pixel's share of the windows that cover it, relative to the "
                    "image's largest"}


def colormap(values: np.ndarray) -> np.ndarray:
    """(...) values in [0, 1] -> (..., 3) RGB in [0, 1] on the inferno scale."""
    position = np.clip(values, 0, 1) * (len(INFERNO) - 1)
    low = np.minimum(position.astype(int), len(INFERNO) - 2)
    frac = (position - low)[..., None]
    return INFERNO[low] * (1 - frac) + INFERNO[low + 1] * frac


def log_scale(maps: list[np.ndarray]) -> float:
    """The colour scale's lower end: the decade below the maps' 1st percentile, in
    [1e-4, 0.1]; LIP's weights span decades (exp of logits up to 12 apart)."""
    low = np.percentile(np.concatenate([m.ravel() for m in maps]), 1)
    return float(np.clip(10.0 ** np.floor(np.log10(max(low, 1e-12))), 1e-4, 0.1))


def tile(gray: np.ndarray, heat: np.ndarray | None, scale: int) -> np.ndarray:
    """(H, W) input in [0, 1] and an (h, w) colour position in [0, 1] (None: the input
    alone) -> (H*scale, W*scale, 3) uint8; the map is upsampled (nearest), shaded by the
    input."""
    if heat is None:
        rgb = np.repeat(gray[..., None], 3, -1)
    else:
        factor = -(-gray.shape[0] // heat.shape[0]), -(-gray.shape[1] // heat.shape[1])
        heat = np.kron(heat, np.ones(factor))[:gray.shape[0], :gray.shape[1]]
        rgb = colormap(heat) * (0.7 + 0.3 * gray[..., None])
    return np.kron(rgb * 255, np.ones((scale, scale, 1))).round().astype(np.uint8)


def colorbar(height: int, floor: float, font) -> Image.Image:
    """A vertical log colour scale from `floor` (bottom) to 1 (top), a tick per decade."""
    bar = colormap(np.linspace(1, 0, height))[:, None].repeat(16, 1)
    decades = round(-np.log10(floor))
    labels = [f"{10.0 ** -d:g}" for d in range(decades + 1)]
    image = Image.new("RGB", (24 + int(max(map(font.getlength, labels))) + PAD, height),
                      "white")
    image.paste(Image.fromarray((bar * 255).round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(image)
    for d, label in enumerate(labels):
        y = round(d / decades * (height - 1))
        draw.line([(16, y), (20, y)], fill="black")
        draw.text((22, min(max(y, FONT_SIZE // 2), height - FONT_SIZE // 2)), label,
                  fill="black", font=font, anchor="lm")
    return image


def wrap(text: str, width: int, font) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if font.getlength(candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def figure(images: np.ndarray, maps: dict, scale: int, normalize_mode: str) -> Image.Image:
    """images (N, H, W, C) in [0, 255] and `{layer: (N, h, w)}` maps -> the PNG's image:
    column titles, one row per image, a log colour scale and a legend."""
    font = ImageFont.load_default(size=FONT_SIZE)
    gray = images.mean(-1) / 255.0
    relative = {k: m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-30)
                for k, m in maps.items()}
    floor = log_scale(list(relative.values()))
    rows = []
    for i in range(len(images)):
        heats = [None] + [np.log10(np.maximum(m[i], floor) / floor) / -np.log10(floor)
                          for m in relative.values()]
        rows.append(np.concatenate(
            [np.pad(tile(gray[i], h, scale), ((PAD, PAD), (PAD, PAD), (0, 0)),
                    constant_values=255) for h in heats], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    cell = grid.width // (len(maps) + 1)
    bar = colorbar(grid.height - 2 * PAD, floor, font)
    width = grid.width + bar.width + 2 * PAD
    legend = wrap(f"rows: eval images; colour (log scale): {LEGEND[normalize_mode]}",
                  width - 2 * PAD, font)
    title_height = 2 * FONT_SIZE + 3 * PAD
    canvas = Image.new("RGB", (width, title_height + grid.height
                               + len(legend) * (FONT_SIZE + PAD) + 2 * PAD), "white")
    canvas.paste(grid, (0, title_height))
    canvas.paste(bar, (grid.width + PAD, title_height + PAD))
    draw = ImageDraw.Draw(canvas)
    columns = [("input", "")] + [(k, f"{m.shape[1]}x{m.shape[2]}") for k, m in maps.items()]
    for column, (name, size) in enumerate(columns):
        center = column * cell + cell // 2
        draw.text((center, PAD), name, fill="black", font=font, anchor="ma")
        draw.text((center, PAD + FONT_SIZE + 2), size, fill="dimgray", font=font, anchor="ma")
    for line_number, line in enumerate(legend):
        draw.text((PAD, title_height + grid.height + PAD + line_number * (FONT_SIZE + PAD)),
                  line, fill="black", font=font)
    return canvas


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--out", default=Path("importance.png"), type=Path)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--normalize", choices=("image", "window"), default="image")
    parser.add_argument("--scale", type=int, default=4, help="pixels per input pixel")
    args, overrides = parser.parse_known_args(argv)
    base = run_config(args.workdir)
    if base is None:
        parser.error(f"{args.workdir} holds no config.json: not a lip-jax train work directory")
    config = load_config(None, overrides, base=base)
    trainer, state = latest_state(config, args.workdir)
    images = next(trainer.input.eval_batches(args.images, 0, 1))["image"]
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    maps = jax.device_get(importance_maps(
        trainer.model, variables, normalize(images, trainer.info.mean, trainer.info.std),
        args.normalize))
    if not maps:
        parser.error(f"{config.model} has no LIP layer: no importance to show")
    figure(np.asarray(images, np.float64), maps, args.scale, args.normalize).save(args.out)
    print(f"wrote {args.out}: {len(images)} images x [input, {', '.join(maps)}] "
          f"(step {int(state.step)})")


if __name__ == "__main__":
    main()
