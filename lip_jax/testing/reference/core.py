"""What every reference op shares: float64 arrays, broadcast logits and their gradient,
the registry of VJPs, and the weighted (or softmax-weighted) mean over explicit regions
of pixels with its pullback."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

Pullback = Callable[[np.ndarray], tuple[np.ndarray, ...]]
_FORWARDS: dict[Callable, Callable] = {}


def with_vjp(forward: Callable) -> Callable:
    """Registers `forward(*args, **kwargs) -> (value, pullback)` and returns the value
    function, with `forward`'s name, signature and docstring; `vjp` finds the pullback."""

    @functools.wraps(forward)
    def value(*args, **kwargs):
        return forward(*args, **kwargs)[0]

    _FORWARDS[value] = forward
    return value


def value_and_pullback(fn: Callable, *args, **kwargs) -> tuple[np.ndarray, Pullback]:
    """`(fn(*args, **kwargs), pullback)` for a reference op `fn` (see `vjp`)."""
    forward = _FORWARDS.get(fn) if callable(fn) else None
    if forward is None:
        raise ValueError(f"{getattr(fn, '__name__', fn)!r} is not a reference op with a VJP; "
                         f"those are {sorted(f.__name__ for f in _FORWARDS)}")
    return forward(*args, **kwargs)


def vjp(fn: Callable, cotangent, *args, **kwargs) -> tuple[np.ndarray, ...]:
    """The vector-Jacobian product of the reference op `fn` at `fn(*args, **kwargs)`.

    Returns float64 gradients, one per differentiable argument of `fn` in order (each
    op's docstring names them), each shaped like its argument (summed over
    broadcasting, and over groups for grouped logits). Exact: closed forms over each
    window's softmax, shifted by the window's own maximum logit.
    """
    value, pullback = value_and_pullback(fn, *args, **kwargs)
    g = as_float64("cotangent", cotangent)
    if g.shape != value.shape:
        raise ValueError(f"cotangent of shape {g.shape} for an output of shape {value.shape}")
    return pullback(g)


def as_float64(name: str, x) -> np.ndarray:
    """Floats, ints and bools (NumPy, JAX, bfloat16, Python scalars) as float64."""
    x = np.asarray(x)
    if not any(jnp.issubdtype(x.dtype, kind) for kind in (jnp.floating, jnp.integer, jnp.bool_)):
        raise TypeError(f"{name} must have a real dtype, got {x.dtype}")
    return x.astype(np.float64)


def unbroadcast(grad: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Sums `grad` over the dims along which an array of `shape` was broadcast."""
    grad = grad.sum(tuple(range(grad.ndim - len(shape))))
    return grad.sum(tuple(a for a, n in enumerate(shape) if n == 1), keepdims=True)


def broadcast_logits(name: str, logits, x_shape, grouped: bool = True):
    """`logits` as float64 of `x_shape`, and the map from a gradient of that back to
    the logits' shape. Per feature `(..., C)`, shared `(..., 1)`, broadcast, or (with
    `grouped`) `(..., G)`, `1 < G < C` dividing `C`: feature `c` takes logit
    `c // (C // G)`."""
    l = as_float64(name, logits)
    c = x_shape[-1] if len(x_shape) else 1
    g = l.shape[-1] if l.ndim else 1
    group = grouped and l.ndim and 1 < g < c and c % g == 0
    expanded = np.repeat(l, c // g, axis=-1) if group else l
    try:
        full = np.broadcast_to(expanded, x_shape)
    except ValueError:
        raise ValueError(f"{name} of shape {l.shape} do not broadcast to inputs of shape "
                         f"{tuple(x_shape)}") from None

    def reduce(grad: np.ndarray) -> np.ndarray:
        if group:
            grad = grad.reshape(*grad.shape[:-1], g, c // g).sum(-1)
        return unbroadcast(grad, l.shape)

    return full, reduce


def batch_first(x: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """`(*batch, *spatial, C)` as `(B, *spatial, C)`, B = prod(batch) (1 without batch)."""
    return x.reshape(-1, *x.shape[x.ndim - spatial_ndim - 1:])


def weighted_mean(x: np.ndarray, out_shape, regions, log: bool = False):
    """`y[o] = sum_t w[o, t] x[q_t] / sum_t w[o, t]` over the taps `t` of each region.

    `x`: `(B, *spatial, C)`; `regions`: `[(o, index, w)]` with `o` the output index,
    `index` a tuple of integer arrays (one per spatial dim, `T` entries, repeats
    allowed) naming each tap's pixel, and `w` the taps' weights, broadcastable to
    `(B, T, C)`; with `log`, `w` are logits and the weights `exp(w - max_t w)` (a
    softmax, exact at any magnitude). Returns `(y (B, *out_shape, C), pullback)`,
    `pullback(g) -> (dx, [dw of each region])`: `dx[q] = sum_o g[o] a[o, q]` with
    `a = w / sum w`, and `dw[o, t] = g[o] (x[q_t] - y[o]) / sum w` (with `log`, the
    derivative by the logit: `g[o] a[o, t] (x[q_t] - y[o])`).
    """
    y = np.empty((x.shape[0], *out_shape, x.shape[-1]))
    saved = []
    for o, index, w in regions:
        at = (slice(None), *index, slice(None))
        xs = x[at]
        w = np.broadcast_to(w, xs.shape)
        if log:
            w = np.exp(w - w.max(1, keepdims=True))
        total = w.sum(1, keepdims=True)
        mean = (w * xs).sum(1, keepdims=True) / total
        y[(slice(None), *o, slice(None))] = mean[:, 0]
        saved.append((o, at, w / total, (xs - mean) * (w / total if log else 1 / total)))

    def pullback(g):
        dx, dws = np.zeros(x.shape), []
        for o, at, a, dw in saved:
            go = g[(slice(None), *o, None, slice(None))]
            np.add.at(dx, at, go * a)
            dws.append(go * dw)
        return dx, dws

    return y, pullback


def scatter(shape, regions, values) -> np.ndarray:
    """The transpose of gathering each region's taps: sums `values[i]` `(B, T, C)` into
    the pixels `regions[i]` names, in a zero array of `shape` `(B, *spatial, C)`."""
    out = np.zeros(shape)
    for (_, index, _), v in zip(regions, values):
        np.add.at(out, (slice(None), *index, slice(None)), v)
    return out
