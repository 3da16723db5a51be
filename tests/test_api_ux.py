"""Cells as users write them (methods, module-style pytrees), one compilation per signature,
the ``autopar`` logger, and the wrapper's metadata."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import emit

from .oracle import assert_trees_close, scan_states

D, T = 4, 12


@pytest.fixture
def builds(monkeypatch):
    """Counts emit.build calls: one per program JAX traces (so, per compilation)."""
    n = [0]
    real = emit.build

    def counting(*a, **k):
        n[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(emit, "build", counting)
    return n


def _data():
    xs = jax.random.normal(jax.random.PRNGKey(0), (T, D))
    return jnp.zeros(D), xs


class Decay:
    """A plain (mutable) class with the step as a method."""

    def __init__(self, a):
        self.a = a

    @autopar.parallelize(solver="linear")
    def step(self, h, x):
        """One decay step."""
        return self.a * h + x


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Module:
    """Equinox/flax-style: an immutable pytree whose fields are the parameters."""

    w: jax.Array

    @autopar.parallelize
    def step(self, h, x):
        return jnp.tanh(self.w * h + x)


def test_method_cell_matches_scan():
    h0, xs = _data()
    m = Decay(jnp.full(D, 0.5))
    ref = scan_states(lambda h, x: m.a * h + x, h0, xs)
    assert_trees_close(m.step(h0, xs), ref)
    hs, info = m.step(h0, xs, return_info=True)
    assert_trees_close(hs, ref)
    assert info.solver == "linear"
    rep = m.step.explain(h0, xs)
    assert rep.structure.kind == "diagonal" and rep.name == "Decay.step"


def test_method_reads_the_instance_afresh():
    """A mutated attribute is used by the next call (no stale closed-over values)."""
    h0, xs = _data()
    m = Decay(jnp.full(D, 0.5))
    first = m.step(h0, xs)
    m.a = jnp.full(D, 0.9)
    assert_trees_close(m.step(h0, xs), scan_states(lambda h, x: 0.9 * h + x, h0, xs))
    assert not np.allclose(first, m.step(h0, xs))


def test_instances_share_one_compilation(builds):
    h0, xs = _data()

    class Local(Decay):
        step = autopar.parallelize(Decay.step.__wrapped__, solver="linear")

    a, b = Local(jnp.full(D, 0.5)), Local(jnp.full(D, 0.25))
    a.step(h0, xs)
    b.step(h0, xs)
    assert builds[0] == 1
    assert_trees_close(b.step(h0, xs), scan_states(lambda h, x: 0.25 * h + x, h0, xs))
    assert a.step == a.step and a.step != b.step and hash(a.step) == hash(a.step)


def test_module_method_under_jit_and_grad():
    h0, xs = _data()
    m = Module(jnp.linspace(-0.5, 0.5, D))
    cell = lambda w: (lambda h, x: jnp.tanh(w * h + x))  # noqa: E731
    assert_trees_close(jax.jit(lambda m: m.step(h0, xs))(m), scan_states(cell(m.w), h0, xs))
    g = jax.grad(lambda m: jnp.sum(m.step(h0, xs) ** 2))(m)
    g_ref = jax.grad(lambda w: jnp.sum(scan_states(cell(w), h0, xs) ** 2))(m.w)
    assert_trees_close(g.w, g_ref, rtol=1e-4)


def test_wrapper_metadata():
    def my_cell(h, x):
        """Docstring of my_cell."""
        return h + x

    fn = autopar.parallelize(my_cell)
    assert fn.__name__ == "my_cell" and fn.__doc__ == "Docstring of my_cell." and fn.__wrapped__ is my_cell
    assert Decay.step.__name__ == "step" and Decay.step.__doc__ == "One decay step."
    assert Decay.__dict__["step"] is Decay.step  # class access gives the unbound object
    assert "my_cell" in repr(fn)
    assert autopar.parallelize(my_cell, name="mine").explain(*_data()).name == "mine"


def test_report_names_the_cell():
    def outer():
        def inner(h, x):
            return 0.5 * h + x

        return inner

    assert autopar.parallelize(outer()).explain(*_data()).name == "test_report_names_the_cell.outer.inner"
    rep = autopar.explain(lambda c, x: (c + x, c), *_data())
    assert rep.name == "test_report_names_the_cell.<lambda>"


def test_return_info_does_not_recompile(builds):
    h0, xs = _data()
    fn = autopar.parallelize(lambda h, x: 0.5 * h + x, solver="linear")
    fn(h0, xs)
    hs, info = fn(h0, xs, return_info=True)
    fn(h0, xs)
    assert builds[0] == 1
    assert float(info.residual) < 1e-5 and bool(info.converged)
    # reverse is a different program; its residual is checked in the reversed order
    hs_r, info_r = fn(h0, xs, reverse=True, return_info=True)
    assert float(info_r.residual) < 1e-5
    assert_trees_close(hs_r, scan_states(lambda h, x: 0.5 * h + x, h0, xs, reverse=True))


def test_autopar_scan_reuses_its_program(builds):
    h0, xs = _data()

    def f(c, x):
        return 0.5 * c + x, c.sum()

    for _ in range(3):
        carry, ys = autopar.scan(f, h0, xs, solver="linear")
    assert builds[0] == 1
    ref = jax.lax.scan(f, h0, xs)
    assert_trees_close((carry, ys), ref)


def test_logger_says_what_is_built(caplog):
    h0, xs = _data()
    fn = autopar.parallelize(lambda h, x: 0.5 * h + x, solver="linear", name="half")
    with caplog.at_level(logging.INFO, logger="autopar"):
        fn(h0, xs)
        fn(h0, xs)
    msgs = [r.getMessage() for r in caplog.records if r.name == "autopar"]
    assert any(m.startswith("analysed 'half'") and "structure scalar" in m for m in msgs), msgs
    assert any(m.startswith("building 'half': solver linear") for m in msgs), msgs
    assert sum(m.startswith("compiled 'half' in") for m in msgs) == 1, msgs


def test_package_is_typed_and_calibrate_resolves():
    from pathlib import Path

    assert (Path(autopar.__file__).parent / "py.typed").exists()
    import autopar.calibrate as mod

    assert autopar.calibrate is mod and callable(autopar.calibrate)
    assert autopar.calibrate.calibrate.__module__ == "autopar.calibrate"


def test_help_lists_every_option():
    from autopar.api import _known_options

    doc = autopar.parallelize.__doc__
    for opt in sorted(_known_options() | {"solver", "tol", "max_iters", "name"}):
        assert f"{opt} (" in doc or f"{opt}:" in doc, opt
    assert "Returns:" in autopar.Parallelized.__call__.__doc__ and "return_info=True" in autopar.scan.__doc__


def test_explain_and_call_share_one_trace():
    """explain() after a call at the same signature (or a call after explain()) does not trace the
    cell again: both read the one cached trace, analysis and plan."""
    traced = []

    def cell(h, x):
        traced.append(1)
        return 0.5 * h + x

    h0, xs = jnp.zeros(3), jnp.ones((5, 3))
    fn = autopar.parallelize(cell)
    fn(h0, xs)
    n = len(traced)
    assert n >= 1
    rep = fn.explain(h0, xs)
    assert len(traced) == n and rep.solver == fn.explain(h0, xs).solver
    fn(h0, xs)
    assert len(traced) == n
    fn.explain(h0, jnp.ones((6, 3)))  # a new signature is traced
    assert len(traced) > n

    traced.clear()
    other = autopar.parallelize(cell)
    rep = other.explain(h0, xs)
    n = len(traced)
    hs = other(h0, xs)
    assert len(traced) == n and hs.shape == (5, 3)
