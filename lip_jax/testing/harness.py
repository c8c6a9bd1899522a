"""How the checks run: hypothesis over examples, tolerances by dtype, comparisons whose
failure names the check, the property and the example, and agreement across JAX's
transformations (jit, vmap, chex's variants)."""

from __future__ import annotations

import unittest
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

try:
    import chex
    import hypothesis
    from hypothesis import HealthCheck, Phase
except ImportError as e:
    raise ImportError(f"lip_jax.testing's checks need hypothesis and chex ({e}): "
                      "pip install 'lip-jax[testing]'") from e

from lip_jax.testing.strategies import Example

TOLERANCES = {"float64": 1e-9, "float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2}
"""Relative tolerance by dtype of the inputs: `|got - want| <= tol * (|want| + scale)`,
`scale` the largest `|want|` of the array (at least 1)."""


def run(check: str, examples, properties: Callable, max_examples: int, seed: int,
        skip=()) -> None:
    """On `max_examples` hypothesis draws of `examples` (from `seed`), runs every
    property of `properties(example) -> {name: property}` whose name is not in `skip`
    (not all of them); the first failure is raised as is (no shrinking: each example
    compiles)."""
    if not isinstance(examples, hypothesis.strategies.SearchStrategy):
        raise TypeError(f"examples must be a strategy of strategies.Example (pool_examples()), "
                        f"got {examples!r}")
    skip = _names("skip", skip)

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None,
                         phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                         suppress_health_check=list(HealthCheck), print_blob=False)
    @hypothesis.seed(seed)
    @hypothesis.given(examples)
    def each(example):
        _computable(check, example)
        checks = properties(example)
        if not skip <= checks.keys():
            raise ValueError(f"skip={sorted(skip)} names no property of {check}: "
                             f"{', '.join(checks)}")
        if skip >= checks.keys():
            raise ValueError(f"skip={sorted(skip)} covers every property of {check}: it "
                             f"would check nothing")
        for name, prop in checks.items():
            if name not in skip:
                prop()

    each.__name__ = each.__qualname__ = check
    each()


def _names(name: str, value) -> frozenset:
    """`value`, a property name or names, as a set; a TypeError naming `name` otherwise."""
    try:
        return frozenset((value,) if isinstance(value, str) else value)
    except TypeError:
        raise TypeError(f"{name} must be a property name or a sequence of them, "
                        f"got {value!r}") from None


def _computable(check: str, example):
    """A TypeError unless `example` is an `Example`, a ValueError unless JAX holds its
    arrays in their dtypes (float64 needs jax_enable_x64)."""
    if not isinstance(example, Example):
        raise TypeError(f"{check}: examples must draw strategies.Example, got {example!r}")
    for name, array in (("inputs", example.inputs), ("logits", example.logits)):
        if array is not None and jax.dtypes.canonicalize_dtype(array.dtype) != array.dtype:
            raise ValueError(
                f"{check}: {array.dtype} {name} need jax_enable_x64 (JAX computes them in "
                f"{jax.dtypes.canonicalize_dtype(array.dtype)} without it); enable it or "
                f"draw other dtypes (pool_examples(dtypes=...))")


class Case:
    """One example under check: `call(*arrays)` (the function under test, its geometry
    bound) eager and jitted, `ref(*arrays) -> (value, pullback)` its reference, and
    failures that name `check`, the property and `example`."""

    def __init__(self, check: str, example, call: Callable, ref: Callable, names):
        self.check, self.example, self.call, self.ref, self.names = check, example, call, ref, names
        self.jit = jax.jit(call)
        self.tol = TOLERANCES.get(np.dtype(example.inputs.dtype).name, 1e-5)

    def fail(self, what: str, detail: str):
        """Raises AssertionError: `what` names the property, `detail` the failure."""
        raise AssertionError(f"{self.check}: {what}: {detail}\n  example: {self.example}")

    def close(self, got, want, what: str, tol: float | None = None, scale: float | None = None):
        """`got` (any array) equals `want` (float64) within `tol` (default the dtype's)."""
        tol = self.tol if tol is None else tol
        got, want = np.asarray(got).astype(np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            self.fail(what, f"shape {got.shape}, expected {want.shape}")
        finite = np.abs(want[np.isfinite(want)])
        scale = max(1.0, finite.max(initial=0.0)) if scale is None else scale
        err = np.abs(got - want)
        bad = ~(err <= tol * (np.abs(want) + scale)) & ~(np.isnan(got) & np.isnan(want))
        if bad.any():
            at = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)),
                                  bad.shape)
            self.fail(what, f"{bad.sum()} of {bad.size} values differ; at {tuple(map(int, at))} "
                            f"got {got[at]:.9g}, expected {want[at]:.9g} (tolerance {tol:g} x "
                            f"(|expected| + {scale:g}))")

    def output(self, y) -> jax.Array:
        """`y`, what the function under test returned; a TypeError naming the check unless
        it is an array."""
        if not isinstance(y, (jax.Array, np.ndarray)):
            raise TypeError(f"{self.check}: fn must return an array, got {type(y).__name__} "
                            f"{y!r}")
        return y

    def value(self, *arrays) -> jax.Array:
        return self.output(self.jit(*arrays))

    def matches_reference(self, *arrays, diff=(0,)):
        """Value and VJP (by `arrays[i]`, `i` in `diff`) equal the reference's, for a
        cotangent drawn from the example's seed."""
        y = self.value(*arrays)
        if y.dtype != self.example.inputs.dtype:
            self.fail("reference: dtype", f"output {y.dtype}, inputs {self.example.inputs.dtype}")
        want, pullback = self.ref(*arrays)
        self.close(y, want, "reference: values")
        g = np.random.default_rng(self.example.input_seed + 1).standard_normal(y.shape)
        g = g.astype(y.dtype)

        def vjp(arrays, g):
            def f(*d):
                full = list(arrays)
                for i, v in zip(diff, d):
                    full[i] = v
                return self.call(*full)

            return jax.vjp(f, *[arrays[i] for i in diff])[1](g)

        grads = jax.jit(vjp)(arrays, g)
        for i, got, expected in zip(diff, grads, pullback(np.asarray(g, np.float64))):
            if got.dtype != np.asarray(arrays[i]).dtype:
                self.fail(f"reference: VJP by {self.names[i]}", f"dtype {got.dtype}, argument "
                          f"{np.asarray(arrays[i]).dtype}")
            self.close(got, expected, f"reference: VJP by {self.names[i]} (reference.vjp)")

    def vmap_agrees(self, *arrays):
        """`jax.vmap` over the example and its negated inputs gives each one's value."""
        other = (-np.asarray(arrays[0]),) + arrays[1:]
        stacked = [np.stack([np.asarray(a), np.asarray(b)]) for a, b in zip(arrays, other)]
        both = self.output(jax.jit(jax.vmap(self.call))(*stacked))
        self.close(both[0], self.value(*arrays), "vmap: the example")
        self.close(both[1], self.value(*other), "vmap: the negated inputs")

    def variants_agree(self, *arrays):
        """chex's variants (with and without jit, with and without device arrays) give
        the jitted value."""
        _run_variants(self, arrays, np.asarray(self.value(*arrays)).astype(np.float64))


class _Variants(chex.TestCase):
    """`case.call` under each chex variant equals `want`; run by `_run_variants`, which
    gives the class its `case`, `arrays`, `want` and a list for what the tests `raised`."""

    case: Case
    arrays: tuple
    want: np.ndarray
    raised: list

    @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
    def test_variant(self):
        eager = self.variant.type in (chex.ChexVariantType.WITH_JIT,
                                      chex.ChexVariantType.WITHOUT_JIT)
        try:  # the device variants move the arguments of the jitted function
            got = self.variant(self.case.call if eager else self.case.jit)(*self.arrays)
            self.case.close(got, self.want, f"variants: chex {self.variant.type}")
        except Exception as e:
            self.raised.append(e)


def _run_variants(case: Case, arrays, want):
    arrays = tuple(jnp.asarray(a) for a in arrays)  # without_device turns them to NumPy
    cls = type("Variants", (_Variants,), dict(case=case, arrays=arrays, want=want, raised=[]))
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(cls).run(result)
    if cls.raised:
        raise cls.raised[0]
    if result.testsRun != 4 or not result.wasSuccessful():
        case.fail("variants", f"{result.testsRun} of 4 chex variants ran: {result.errors}")
