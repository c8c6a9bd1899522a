"""Anchor boxes of a feature pyramid, as constants of the static image and map sizes."""

from collections.abc import Sequence

import numpy as np


def level_anchors(height: int, width: int, stride: int, sizes: Sequence[float],
                  aspect_ratios: Sequence[float]) -> np.ndarray:
    """`(height * width * A, 4)` anchors `(x1, y1, x2, y2)` of a `(height, width)` map of
    `stride` pixels per cell: at each cell centre `((j + 0.5) * stride, (i + 0.5) * stride)`,
    row-major, `A = len(sizes) * len(aspect_ratios)` boxes of area `size**2` and
    height / width `ratio`, sizes outer, ratios inner."""
    shapes = [(size / np.sqrt(r), size * np.sqrt(r)) for size in sizes for r in aspect_ratios]
    half = 0.5 * np.array([[-w, -h, w, h] for w, h in shapes])  # (A, 4)
    ys, xs = np.meshgrid((np.arange(height) + 0.5) * stride, (np.arange(width) + 0.5) * stride,
                         indexing="ij")
    centres = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)
    return (centres + half[None]).reshape(-1, 4).astype(np.float32)


def pyramid_anchors(map_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                    sizes: Sequence[Sequence[float]],
                    aspect_ratios: Sequence[float]) -> np.ndarray:
    """Every level's `level_anchors` (level l: a map of `map_sizes[l]`, `strides[l]` pixels
    per cell, `sizes[l]`), concatenated in level order: `(sum_l H_l * W_l * A, 4)`."""
    return np.concatenate([
        level_anchors(height, width, stride, level_sizes, aspect_ratios)
        for (height, width), stride, level_sizes in zip(map_sizes, strides, sizes)])
