"""Pooling per shard of a sharded batch: no collective inside a pooling op.

A pooling op treats every image on its own, so under data parallelism it should run on
each device's images and communicate nothing. GSPMD cannot see that through a
`pallas_call` (it gathers the batch) or through the XLA graph's per-batch `lax.cond`
(an all-reduce). `per_shard` runs the op under `jax.shard_map` over the mesh that the
inputs' type carries (`jax.typeof(x).sharding.mesh`, from a `NamedSharding`), or else
over the mesh in context (`jax.set_mesh`):

- Explicit mesh axes: the batch dim keeps its own sharding, whatever the axes.
- Auto axes (the type has no spec): the batch is split over every axis of the mesh,
  data parallelism's layout, when their sizes divide it.
The feature dim keeps an explicit sharding when the logits shard with it (per feature,
or groups that divide evenly); spatial dims are gathered (a window crosses them). With
no mesh (single-device arrays), a mesh of one device, a batch that does not divide, or
inside a `shard_map` already, the op runs as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.sharding import AxisType, PartitionSpec as P


def _mesh(x):
    """The mesh of `x`'s type (or else of the context, `jax.set_mesh`) if it has axes
    that can still be split, else None."""
    mesh = jax.typeof(x).sharding.mesh
    if mesh.empty:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or any(t == AxisType.Manual for t in mesh.axis_types):
        return None
    return mesh


def device_count(x) -> int:
    """How many devices an op on `x` runs on: the size of its type's mesh (or else of
    the context's, `jax.set_mesh`, inside a `shard_map` too), 1 without a mesh."""
    mesh = jax.typeof(x).sharding.mesh
    if mesh.empty:
        mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.size


def _axes_size(mesh, axes) -> int:
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)


def _specs(x, l, mesh):
    """(spec of x, spec of l) for shard_map, or None when the batch is not split."""
    spec = tuple(jax.typeof(x).sharding.spec) + (None,) * x.ndim
    explicit = all(t == AxisType.Explicit for t in mesh.axis_types)
    batch = spec[0] if explicit else tuple(mesh.axis_names)
    n = _axes_size(mesh, batch)
    if batch is None or n == 1 or x.shape[0] % n:
        return None
    features = spec[x.ndim - 1] if explicit else None
    n = _axes_size(mesh, features)
    if x.shape[-1] % n or (l.ndim and l.shape[-1] > 1 and l.shape[-1] % n):
        features = None
    l_features = features if l.ndim and l.shape[-1] > 1 else None
    if l.ndim == x.ndim:
        l_batch = batch if l.shape[0] == x.shape[0] else None
        l_spec = P(l_batch, *[None] * (l.ndim - 2), l_features)
    else:
        l_spec = P(*[None] * (l.ndim - 1), l_features) if l.ndim else P()
    return P(batch, *[None] * (x.ndim - 2), features), l_spec


def per_shard(fn: Callable, x: jax.Array, l: jax.Array, *like_x, all_axes_manual: bool = False):
    """`fn(x, l, *like_x)` for `x` `(B, *spatial, C)`, `l` broadcastable to it and arrays
    (or lists of arrays) `like_x` `(B, ..., C)`, run on each shard of the batch when the
    inputs are split over a mesh; `fn` must treat every image on its own and return
    `(B, ..., C)` arrays.

    The mesh axes that split the inputs become manual, the others stay automatic, so no
    cotangent is summed over a mesh axis (except that of logits shared across the batch:
    their gradient is a sum over the batch). `all_axes_manual` makes every axis manual,
    for Pallas' TPU interpreter, whose callbacks need it: the inputs are then replicated
    over the other axes and their cotangents reduced over them (an all-reduce; correct)."""
    mesh = _mesh(x) if x.ndim >= 2 else None
    specs = None if mesh is None else _specs(x, l, mesh)
    if specs is None:
        return fn(x, l, *like_x)
    x_spec, l_spec = specs
    axes = set(mesh.axis_names) if all_axes_manual else {
        a for part in x_spec if part is not None
        for a in ((part,) if isinstance(part, str) else part)}
    # check_vma=False: Pallas' interpret mode mixes varying and unvarying values.
    return jax.shard_map(fn, mesh=mesh, in_specs=(x_spec, l_spec, *[x_spec] * len(like_x)),
                         out_specs=x_spec, axis_names=axes, check_vma=False)(x, l, *like_x)
