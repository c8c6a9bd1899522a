"""LIP beyond local windows: global, adaptive (PyTorch bins) and RoI importance pooling.

Each is an importance-weighted mean `sum w x / sum w` with `w = exp(logits)` over a
region: all positions (`global_lip_pool`), PyTorch's adaptive-pool bins
(`adaptive_lip_pool`), or the bilinear samples of RoIAlign (`roi_lip_pool`). Zero
logits give the classical counterpart (global average, `adaptive_avg_pool2d`,
`roi_align`); logits `beta * inputs` tend to the max over the region as beta grows.
Logits are shifted by their (stop-gradient) maximum over each region before `exp` (the
result is unchanged) and sums run in float32 (float64 for float64 inputs), so no logit
magnitude overflows or underflows.
Gradients are autodiff's, which is exact here.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.windows import flag, float_array, positive_ints


def _compute(x, name: str, spatial_ndim: int | None = None) -> jax.Array:
    """`x` `(N, *spatial, C)` as an array in float32 (float64 stays float64), with
    `spatial_ndim` (or at least one) non-empty spatial dims; `name` names it in errors."""
    x = float_array(name, x)
    if x.ndim < 3 or (spatial_ndim is not None and x.ndim != spatial_ndim + 2):
        dims = "*spatial" if spatial_ndim is None else ", ".join("HW"[:spatial_ndim])
        raise ValueError(f"{name} of shape {x.shape}: expected (N, {dims}, C)")
    if 0 in x.shape[1:-1]:
        raise ValueError(f"{name} of shape {x.shape} have no spatial positions to pool")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _logits_like(x, logits) -> jax.Array:
    """`logits` in x's compute dtype, broadcast to `x.shape[:-1] + (C or 1,)`."""
    l = float_array("logits", logits).astype(x.dtype)
    shape = x.shape[:-1] + (x.shape[-1] if l.ndim and l.shape[-1] != 1 else 1,)
    try:
        ok = jnp.broadcast_shapes(l.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"logits of shape {l.shape} do not broadcast to {shape} (per "
                         f"channel or shared) for inputs of shape {x.shape}")
    return jnp.broadcast_to(l, shape)


def _output_size(output_size, spatial_ndim: int) -> tuple[int, ...]:
    """An int (every spatial dim) or one positive int per spatial dim."""
    if isinstance(output_size, (int, np.integer)):
        output_size = (output_size,) * spatial_ndim
    elif not isinstance(output_size, Sequence) or isinstance(output_size, str):
        raise TypeError(f"output_size must be an int or {spatial_ndim} ints, got "
                        f"{output_size!r}")
    return positive_ints("output_size", output_size, spatial_ndim)


def global_lip_pool(inputs, logits):
    """Importance-weighted mean over every spatial position, `(N, *spatial, C) -> (N, C)`.

    `logits` broadcast to `inputs` (per channel `(N, *spatial, C)` or shared
    `(N, *spatial, 1)`). Zero logits give global average pooling.
    """
    x = _compute(inputs, "inputs")
    l = _logits_like(x, logits)
    spatial = tuple(range(1, x.ndim - 1))
    w = jnp.exp(l - jax.lax.stop_gradient(jnp.max(l, axis=spatial, keepdims=True)))
    out = jnp.sum(w * x, axis=spatial) / jnp.sum(w, axis=spatial)
    return out.astype(jnp.asarray(inputs).dtype)


def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive-pool bins along one axis: bin i spans `floor(i * size / out)`
    to `ceil((i + 1) * size / out)` (exclusive). Returns `(index, valid)`, both
    `(out, longest bin)`: each bin's positions, padded with valid False."""
    i = np.arange(out)
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    index = start[:, None] + np.arange(int((end - start).max()))
    valid = index < end[:, None]
    return np.minimum(index, size - 1), valid


def adaptive_lip_pool(inputs, logits, output_size: int | Sequence[int]):
    """Importance-weighted mean over PyTorch's adaptive bins.

    `inputs` `(N, *spatial, C)` -> `(N, *output_size, C)`; `output_size` an int (every
    spatial dim) or one int per spatial dim; `logits` broadcast to `inputs`. With zero
    logits this equals `torch.nn.functional.adaptive_avg_pool2d` (channels-last) for any
    sizes. Each bin's logits are shifted by their maximum, so large logits never underflow.
    """
    x = _compute(inputs, "inputs")
    n_spatial = x.ndim - 2
    sizes = _output_size(output_size, n_spatial)
    l = _logits_like(x, logits)
    bins = [adaptive_bins(size, out) for size, out in zip(x.shape[1:-1], sizes)]
    mask = np.ones((1,) * (2 + 2 * n_spatial), bool)
    for i, (index, valid) in enumerate(bins):  # spatial dim i becomes (bins, positions)
        axis = 1 + 2 * i
        split = lambda a: a.reshape(a.shape[:axis] + index.shape + a.shape[axis + 1:])
        x = split(jnp.take(x, index.reshape(-1), axis=axis))
        l = split(jnp.take(l, index.reshape(-1), axis=axis))
        shape = [1] * mask.ndim
        shape[axis:axis + 2] = valid.shape
        mask = mask & valid.reshape(shape)
    positions = tuple(range(2, x.ndim - 1, 2))
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(mask, l, -jnp.inf), axis=positions,
                                          keepdims=True))
    w = jnp.exp(jnp.where(mask, l - shift, -jnp.inf))
    out = jnp.sum(w * x, axis=positions) / jnp.sum(w, axis=positions)
    return out.astype(jnp.asarray(inputs).dtype)


def _sample_axis(coord, size: int):
    """torchvision's bilinear rule along one axis: (low, high, low weight, high weight)
    indices and weights, with weights 0 for samples outside [-1, size]."""
    inside = (coord >= -1.0) & (coord <= size)
    c = jnp.maximum(coord, 0.0)
    low = jnp.floor(c).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, c - low)
    return low, high, jnp.where(inside, 1 - frac, 0.0), jnp.where(inside, frac, 0.0)


def _bilinear(maps, batch, ys, xs):
    """Samples `maps` `(N, H, W, C)` at rows `ys` `(K, Y)` x columns `xs` `(K, X)` of image
    `batch` `(K,)`: `(K, Y, X, C)`, 0 outside [-1, H] x [-1, W] as in torchvision."""
    y0, y1, wy0, wy1 = _sample_axis(ys, maps.shape[1])
    x0, x1, wx0, wx1 = _sample_axis(xs, maps.shape[2])
    b = batch[:, None, None]
    out = 0.0
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            weight = (wy[:, :, None] * wx[:, None, :])[..., None]
            out = out + weight * maps[b, yi[:, :, None], xi[:, None, :]]
    return out


def _valid_boxes(boxes: jax.Array, num_images: int) -> jax.Array:
    """`(K,)` whether each row of `boxes` `(K, 5)` has an integer batch index in
    `[0, num_images)` and finite coordinates. Concrete boxes: ValueError naming the first
    row that has not."""
    if not isinstance(boxes, jax.core.Tracer):
        rows = np.asarray(boxes, np.float64)
        index = rows[:, 0]
        bad_index = ~((index == np.round(index)) & (index >= 0) & (index < num_images))
        bad_coords = ~np.isfinite(rows[:, 1:]).all(axis=1)
        for k in np.flatnonzero(bad_index | bad_coords)[:1]:
            problem = (f"batch index {index[k]} is not an image of the features (an integer "
                       f"in 0..{num_images - 1})" if bad_index[k]
                       else "its coordinates must be finite")
            raise ValueError(f"box {k} {tuple(rows[k].tolist())}: {problem}")
    index = boxes[:, 0]
    return ((index == jnp.round(index)) & (index >= 0) & (index < num_images)
            & jnp.all(jnp.isfinite(boxes[:, 1:]), axis=1))


def roi_lip_pool(features, logits, boxes, output_size: int | Sequence[int],
                 spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True):
    """RoIAlign whose bilinear samples are averaged with weights exp(logits).

    Args:
      features: `(N, H, W, C)`.
      logits: broadcastable to `features` (`(N, H, W, C)` or `(N, H, W, 1)`), sampled at
        the same bilinear points as the features.
      boxes: `(K, 5)` rows `(batch_index, x1, y1, x2, y2)` in input pixels.
      output_size: `(out_h, out_w)` or an int.
      spatial_scale: feature-map pixels per input pixel (1/stride).
      sampling_ratio: samples per bin along each axis (torchvision's adaptive choice,
        `sampling_ratio <= 0`, needs data-dependent shapes and is not supported).
      aligned: shift box corners by -0.5 pixel (torchvision's `aligned=True`).
    Returns:
      `(K, out_h, out_w, C)` in the features' dtype. Samples outside `[-1, H] x [-1, W]`
      read 0 for features and logits (weight exp(0)), as torchvision's samples read 0, so
      zero logits equal `torchvision.ops.roi_align` with the same arguments.
    Raises:
      ValueError naming the first bad box when `boxes` is concrete and a row's batch index
      is not an integer in `[0, N)` or a coordinate is NaN or infinite. Under `jax.jit`
      (boxes not concrete) such a box's output is NaN instead, and its gradients are 0.
    """
    f = _compute(features, "features", spatial_ndim=2)
    boxes = jnp.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes of shape {boxes.shape}: expected (K, 5) rows "
                         "(batch_index, x1, y1, x2, y2)")
    out_h, out_w = _output_size(output_size, 2)
    g = int(sampling_ratio) if isinstance(sampling_ratio, (int, np.integer)) else 0
    if g < 1:
        raise ValueError(f"sampling_ratio must be an int >= 1, got {sampling_ratio!r} (the "
                         "adaptive choice, <= 0, has data-dependent shapes)")
    l = _logits_like(f, logits)
    valid = _valid_boxes(boxes, f.shape[0])
    b = jnp.where(valid[:, None], boxes, jnp.array([0, 0, 0, 1, 1])).astype(f.dtype)
    aligned = flag("aligned", aligned)
    offset = 0.5 if aligned else 0.0
    scale = float_array("spatial_scale", spatial_scale, ints_as=f.dtype)
    x1, y1, x2, y2 = (b[:, i] * scale - offset for i in range(1, 5))
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = jnp.maximum(width, 1.0), jnp.maximum(height, 1.0)

    def points(start, length, bins):  # (K, bins * g) sample coordinates, bin-major
        step = (length / bins)[:, None]
        i = jnp.arange(bins * g)
        return start[:, None] + step * (i // g + (i % g + 0.5) / g)

    ys, xs = points(y1, height, out_h), points(x1, width, out_w)
    batch = b[:, 0].astype(jnp.int32)
    k = boxes.shape[0]
    values = _bilinear(f, batch, ys, xs).reshape(k, out_h, g, out_w, g, f.shape[-1])
    weights = _bilinear(l, batch, ys, xs).reshape(k, out_h, g, out_w, g, l.shape[-1])
    weights = jnp.exp(weights - jax.lax.stop_gradient(
        jnp.max(weights, axis=(2, 4), keepdims=True)))
    out = jnp.sum(weights * values, axis=(2, 4)) / jnp.sum(weights, axis=(2, 4))
    out = jnp.where(valid[:, None, None, None], out, jnp.nan)
    return out.astype(jnp.asarray(features).dtype)
