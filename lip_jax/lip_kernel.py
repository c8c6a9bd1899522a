"""The fused LIP kernels' shared derivative: one `jax.custom_vjp` over the GPU (Triton,
`lip_jax.pallas_gpu`; Mosaic GPU, `lip_jax.pallas_mosaic_gpu`) and TPU (Mosaic,
`lip_jax.pallas_tpu`) kernels.

Each kernel module has `forward(x, logits, geometry, interpret, residuals)` and
`backward(x, logits, y, stats, g, geometry, interpret)`. Under differentiation the
forward keeps `y` in float32 (a bfloat16 output rounded before the backward's `x - y`
would cost the logit gradient two decimal digits) and its per-window statistics; the
primal call writes only `y` in the input dtype. Off their backend the kernels run in
Pallas interpret mode (the Mosaic ones with Mosaic's TPU and GPU interpreters): tests
only.
"""

from __future__ import annotations

import functools
import importlib

import jax


def out_struct(shape, dtype, like: jax.Array) -> jax.ShapeDtypeStruct:
    """A kernel output's shape and dtype, varying over the same manual mesh axes as `like`
    (inside `jax.shard_map`)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)


def _kernels(backend: str):
    """(kernel module, interpret argument) for "gpu", "mosaic_gpu" or "tpu" on the
    running platform."""
    module = importlib.import_module(f"lip_jax.pallas_{backend}")
    if jax.default_backend() == module.PLATFORM:
        return module, False
    return module, module.interpret_mode()


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def lip_pool_nhwc(x, logits, geometry, backend: str):
    """LIP pooling of `x (N, H, W, C)` with `logits (N, H, W, L)`, `L` dividing `C`.

    `geometry` = ((kh, kw), (sh, sw), ((ph_lo, ph_hi), (pw_lo, pw_hi))), as validated by
    `windows.pool_window` (every window holds an in-image pixel); `backend` "gpu",
    "mosaic_gpu" or "tpu". Returns `(N, Ho, Wo, C)` in x.dtype.
    """
    module, interpret = _kernels(backend)
    return module.forward(x, logits, geometry, interpret, residuals=False)


def _fwd(x, logits, geometry, backend):
    module, interpret = _kernels(backend)
    y, stats = module.forward(x, logits, geometry, interpret, residuals=True)
    return y.astype(x.dtype), (x, logits, y, stats)


def _bwd(geometry, backend, residuals, g):
    x, logits, y, stats = residuals
    module, interpret = _kernels(backend)
    dx, dl = module.backward(x, logits, y, stats, g, geometry, interpret)
    n, h, w, c = x.shape
    groups = logits.shape[-1]
    dl = dl.reshape(n, h, w, groups, c // groups).sum(-1)
    return dx.astype(x.dtype), dl.astype(logits.dtype)


lip_pool_nhwc.defvjp(_fwd, _bwd)
