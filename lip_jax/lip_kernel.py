"""The fused LIP kernels' shared derivative: one `jax.custom_vjp` over the GPU (Triton,
`lip_jax.pallas_gpu`; Mosaic GPU, `lip_jax.pallas_mosaic_gpu`) and TPU (Mosaic,
`lip_jax.pallas_tpu`) kernels.

Each kernel module has `forward(x, logits, geometry, interpret, residuals)` and
`backward(x, logits, y, stats, g, geometry, interpret)`. Under differentiation the
forward keeps `y` in float32 (a bfloat16 output rounded before the backward's `x - y`
would cost the logit gradient two decimal digits) and its per-window statistics; the
primal call writes only `y` in the input dtype. Derivatives beyond the first (a
gradient of a gradient, `jax.hessian`) are the XLA graph's (`lip_jax.lip_xla`), exact
too: the kernels' forward and backward are `jax.custom_jvp`s whose JVPs are the graph's.
Forward mode alone (`jax.jvp`, `jax.jacfwd`) is refused by JAX (a `custom_vjp`). Under
`vmap` a kernel call runs once over the vmapped images (`_kernel`). Off their backend the
kernels run in Pallas interpret mode (the Mosaic ones with Mosaic's TPU and GPU
interpreters): tests only.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from lip_jax import lip_xla
from lip_jax.sharded import per_shard
from lip_jax.windows import Window


def out_struct(shape, dtype, like: jax.Array) -> jax.ShapeDtypeStruct:
    """A kernel output's shape and dtype, varying over the same manual mesh axes as `like`
    (inside `jax.shard_map`)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)


def _kernel(backend: str, method: str, *arrays, **static):
    """`forward` or `backward` (`method`) of `backend`'s kernel module ("gpu", "mosaic_gpu"
    or "tpu"; interpreted off its platform) on arrays (or lists of them) `(N, ...)`.

    Under `vmap`, the vmapped dim joins N: one kernel call over the larger batch, run per
    shard where the vmapped dim is split over a mesh (`per_shard`), rather than Pallas'
    batching rule, which cannot split it."""
    module = importlib.import_module(f"lip_jax.pallas_{backend}")
    interpret = jax.default_backend() != module.PLATFORM and module.interpret_mode()
    kernel = functools.partial(getattr(module, method), **static, interpret=interpret)

    @jax.custom_batching.custom_vmap
    def call(*arrays):
        return kernel(*arrays)

    @call.def_vmap
    def fold(size, batched, *arrays):
        # unbatched arrays are broadcast, split as the batched ones are
        like = next(a for a, b in zip(jax.tree.leaves(arrays), jax.tree.leaves(batched)) if b)
        mesh, spec = jax.typeof(like).sharding.mesh, jax.typeof(like).sharding.spec
        split = NamedSharding(mesh, P(spec[0])) if spec and spec[0] else None
        arrays = jax.tree.map(
            lambda a, b: a if b else jnp.broadcast_to(a, (size, *a.shape), out_sharding=split),
            arrays, tuple(batched))
        n = arrays[0].shape[1]
        merged = jax.tree.map(lambda a: a.reshape(size * n, *a.shape[2:]), arrays)
        out = per_shard(call, *merged, all_axes_manual=bool(interpret) and backend == "tpu")
        out = jax.tree.map(lambda a: a.reshape(size, n, *a.shape[1:]), out)
        return out, jax.tree.map(lambda _: True, out)

    return call(*arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def lip_pool_nhwc(x, logits, geometry, backend: str):
    """LIP pooling of `x (N, H, W, C)` with `logits (N, H, W, L)`, `L` dividing `C`.

    `geometry` = ((kh, kw), (sh, sw), ((ph_lo, ph_hi), (pw_lo, pw_hi))), as validated by
    `windows.pool_window` (every window holds an in-image pixel); `backend` "gpu",
    "mosaic_gpu" or "tpu". Returns `(N, Ho, Wo, C)` in x.dtype.
    """
    return _kernel(backend, "forward", x, logits, geometry=geometry, residuals=False)


def _xla_lip(x, logits, geometry):
    """The XLA graph's LIP on a kernel's arguments, in float32 (or wider)."""
    n, h, w, c = x.shape
    groups = logits.shape[-1]
    (kh, kw), (sh, sw), (ph, pw) = geometry
    window = Window((1, kh, kw, 1, 1), (1, sh, sw, 1, 1), ((0, 0), ph, pw, (0, 0), (0, 0)))
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = lip_xla.lip(x.reshape(n, h, w, groups, c // groups), logits[..., None], window)
    return y.reshape(*y.shape[:3], c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _forward(x, logits, geometry, backend: str):
    """The kernel's forward under differentiation: (y in float32, per-window stats)."""
    return _kernel(backend, "forward", x, logits, geometry=geometry, residuals=True)


@_forward.defjvp
def _forward_jvp(geometry, backend, primals, tangents):
    """y's tangent by the XLA graph; the stats' is given as zero: only `_backward` reads
    them, and its JVP recomputes from x and the logits."""
    y, stats = _forward(*primals, geometry, backend)
    dy = jax.jvp(lambda x, l: _xla_lip(x, l, geometry), primals, tangents)[1]
    return (y, stats), (dy.astype(y.dtype), jax.tree.map(jnp.zeros_like, stats))


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _backward(x, logits, y, stats, g, geometry, backend: str):
    """The kernel's cotangents of x and the logits (summed over each logit's features)."""
    dx, dl = _kernel(backend, "backward", x, logits, y, stats, g, geometry=geometry)
    n, h, w, c = x.shape
    groups = logits.shape[-1]
    dl = dl.reshape(n, h, w, groups, c // groups).sum(-1)
    return dx.astype(x.dtype), dl.astype(logits.dtype)


@_backward.defjvp
def _backward_jvp(geometry, backend, primals, tangents):
    """The tangent of the XLA graph's cotangents, a function of x, the logits and g."""
    x, logits, _, _, g = primals
    dx, dl, _, _, dg = tangents

    def cotangents(x, logits, g):
        _, vjp = jax.vjp(lambda x, l: _xla_lip(x, l, geometry), x, logits)
        cts = vjp(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
        return tuple(ct.astype(a.dtype) for ct, a in zip(cts, (x, logits)))

    return (_backward(*primals, geometry, backend),
            jax.jvp(cotangents, (x, logits, g), (dx, dl, dg))[1])


def _fwd(x, logits, geometry, backend):
    y, stats = _forward(x, logits, geometry, backend)
    return y.astype(x.dtype), (x, logits, y, stats)


def _bwd(geometry, backend, residuals, g):
    return _backward(*residuals, g, geometry, backend)


lip_pool_nhwc.defvjp(_fwd, _bwd)
