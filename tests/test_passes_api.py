"""User extension API (register / register_rule), the worked example, and check=True."""

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.passes import Pass, PassError
from autopar.passes.check import StructureCheckError, check_facts
from tests.passes_helpers import analyse_cell

ROOT = Path(__file__).resolve().parents[1]
F64 = jnp.float64


def test_example_runs():
    ns = runpy.run_path(str(ROOT / "examples" / "custom_pass.py"))
    before, report, tri, hs, ref = ns["main"]()
    assert before.structure.kind == "dense" and before.conservative == ["softsign"]
    assert report.structure.kind == "diagonal" and report.conservative == []
    assert tri.facts["bandwidth"] == 1
    np.testing.assert_allclose(hs, ref, rtol=1e-5, atol=1e-6)
    assert "softsign" not in autopar.passes.registered_rules()  # the example cleans up


def test_register_rule_rejects_duplicates_and_builtins():
    autopar.passes.register_rule("my_prim_x", sparsity="dense")
    try:
        with pytest.raises(ValueError, match="already registered"):
            autopar.passes.register_rule("my_prim_x", sparsity="elementwise")
        autopar.passes.register_rule("my_prim_x", sparsity="elementwise", override=True)
        assert autopar.passes.registered_rules()["my_prim_x"]["sparsity"] == "elementwise"
    finally:
        autopar.passes.unregister_rule("my_prim_x")
    with pytest.raises(ValueError, match="built-in rule for primitive 'tanh'"):
        autopar.passes.register_rule("tanh", sparsity="dense")
    with pytest.raises(ValueError, match="sparsity="):
        autopar.passes.register_rule("my_prim_y", sparsity="diagonal")
    with pytest.raises(ValueError, match="at least one"):
        autopar.passes.register_rule("my_prim_y")


def test_override_builtin_rule_with_callable():
    calls = []

    def dense_sin(eqn, deps):  # a (deliberately loose) user rule overriding sin
        calls.append(eqn.primitive.name)
        acc = deps[0].reshape(-1, deps[0].shape[-1]).any(axis=0)
        return [np.broadcast_to(acc, tuple(eqn.outvars[0].aval.shape) + acc.shape)]

    autopar.passes.register_rule("sin", sparsity=dense_sin, degree=lambda eqn, d: "nonlinear", override=True)
    try:
        _, facts = analyse_cell(lambda h, x: jnp.sin(h) * x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
        assert calls == ["sin"] and facts.sparsity.all()
    finally:
        autopar.passes.unregister_rule("sin")
    _, facts = analyse_cell(lambda h, x: jnp.sin(h) * x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    assert facts.structure.kind == "diagonal"


def test_register_pass_duplicate_and_failure_message():
    class Boom(Pass):
        name = "boom"
        requires = ("structure",)
        provides = ("boom",)

        def run(self, rec, facts):
            raise RuntimeError("kaput")

    autopar.passes.register(Boom)
    try:
        with pytest.raises(ValueError, match="already registered"):
            autopar.passes.register(Boom)
        with pytest.raises(PassError, match=r"'boom' failed .* after \[.*'structure'.*\]: RuntimeError: kaput"):
            analyse_cell(lambda h, x: h * x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    finally:
        autopar.passes.unregister("boom")


def test_check_passes_on_sound_cells():
    fn = autopar.parallelize(lambda h, x: jnp.tanh(0.5 * h[jnp.array([1, 0, 2])] + x), check=True)
    h0, xs = jnp.zeros(3, F64), jnp.ones((4, 3), F64)
    out = fn(h0, xs)
    assert out.shape == (4, 3)


def test_check_names_the_pass_and_entries():
    """A wrong user rule (claims elementwise for a mixing primitive) is caught by check=True."""
    rec, facts = analyse_cell(lambda h, x: jnp.cumsum(h) * x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    facts["sparsity"] = np.eye(3, dtype=bool)  # simulate an unsound rule
    with pytest.raises(StructureCheckError, match=r"sparsity pass .*∂h0\[1\]/∂h0\[0\]"):
        check_facts(rec, facts)

    rec, facts = analyse_cell(lambda h, x: 2.0 * h + x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    from autopar.structure import Identity

    facts["structure"] = Identity(3)  # simulate a wrong identity proof
    with pytest.raises(StructureCheckError, match="coefficients pass proved J = I"):
        check_facts(rec, facts)

    rec, facts = analyse_cell(lambda h, x: jnp.tanh(h) + x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    facts["linear"] = True  # simulate a wrong affinity claim
    with pytest.raises(StructureCheckError, match="linearity pass"):
        check_facts(rec, facts)


def test_check_through_parallelize_with_wrong_rule():
    def mix(eqn, deps):  # unsound on purpose: claims the cumsum is elementwise
        return [deps[0]]

    autopar.passes.register_rule("cumsum", sparsity=mix, override=True)
    try:
        fn = autopar.parallelize(lambda h, x: jnp.cumsum(h) * x, check=True)
        with pytest.raises(StructureCheckError, match="sparsity pass"):
            fn(jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    finally:
        autopar.passes.unregister_rule("cumsum")


def test_explain_shows_the_trace_a_call_runs_and_a_redone_trace_is_reanalysed(monkeypatch):
    """Like lax.scan (which caches a body's trace by function identity), a trace is cached per
    signature and explain() renders that same trace, never re-tracing. A trace is redone when its
    closed-over values were tracers (here: under jax.grad); then a changed folded constant (the
    permutation) must be re-analysed, not served from the analysis cache — a stale monomial σ
    would give wrong values and gradients."""
    box = {"perm": np.array([1, 0, 2, 3]), "s": 0.5}

    def cell(h, x):
        return box["s"] * h[box["perm"]] + x

    h0, xs = jnp.zeros(4, F64), jnp.arange(12.0, dtype=F64).reshape(3, 4)
    from autopar import trace

    traced = []
    real_trace = trace.trace_cell
    monkeypatch.setattr(trace, "trace_cell", lambda *a, **k: traced.append(1) or real_trace(*a, **k))
    eager = autopar.parallelize(cell, solver="linear")
    eager(h0, xs)
    eager.explain(h0, xs)
    eager.explain(h0, xs)
    assert len(traced) == 1  # the call's trace serves explain(): it is never re-traced
    monkeypatch.setattr(trace, "trace_cell", real_trace)

    fn = autopar.parallelize(cell, solver="linear")

    def loss(run, s):
        box["s"] = s
        try:
            return jnp.sum(run(h0, xs) ** 2)
        finally:
            box["s"] = 0.5

    def scan_run(h0, xs):  # a new body each call: lax.scan's own trace cache cannot serve it
        return jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]

    for perm in ([1, 0, 2, 3], [3, 2, 1, 0]):
        box["perm"] = np.array(perm)
        g, g_ref = jax.grad(lambda s: loss(fn, s))(0.5), jax.grad(lambda s: loss(scan_run, s))(0.5)
        np.testing.assert_allclose(g, g_ref, rtol=1e-10)
        assert g_ref != 0


def test_pass_manager_enforces_declared_facts():
    """A pass returning an undeclared fact, or omitting one it provides, is a PassError naming both."""
    from autopar.passes import PassManager

    class Sloppy(Pass):
        name = "sloppy"
        requires = ("sparsity",)
        provides = ("sloppy_a",)

        def run(self, rec, facts):
            return {"sloppy_a": 1, "sloppy_b": 2}

    class Forgetful(Pass):
        name = "forgetful"
        provides = ("forgot_a", "forgot_b")

        def run(self, rec, facts):
            return {"forgot_a": 1}

    class Refiner(Pass):  # may overwrite another pass's fact without providing it every time
        name = "refiner"
        provides = ("refiner_ran",)
        refines = ("notes",)

        def run(self, rec, facts):
            return {"refiner_ran": True, "notes": list(facts.get("notes", [])) + ["refined"]}

    base = autopar.passes.registered_passes()
    rec, _ = analyse_cell(lambda h, x: jnp.tanh(h) * x, jnp.zeros(3, F64), jnp.ones((2, 3), F64))
    with pytest.raises(PassError, match=r"'sloppy' returned fact 'sloppy_b', which it does not declare"):
        PassManager(base + [Sloppy()]).run(rec)
    with pytest.raises(PassError, match=r"'forgetful' declares fact 'forgot_b' in `provides` but did not return it"):
        PassManager(base + [Forgetful()]).run(rec)
    facts = PassManager(base + [Refiner()]).run(rec)
    assert facts["refiner_ran"] and facts["notes"][-1] == "refined"
    assert facts["step_ops"] == autopar.costs.step_ops(rec.step_jaxpr)


def test_every_builtin_pass_declares_what_it_returns():
    for cell in (lambda h, x: jnp.tanh(h) * x, lambda h, x: 0.5 * h + x):
        analyse_cell(cell, jnp.zeros(3, F64), jnp.ones((2, 3), F64))  # raises PassError if not
    S = jnp.zeros((3, 3), F64)
    analyse_cell(lambda S, x: S @ (jnp.eye(3) * 0.5) + x, S, jnp.ones((2, 3, 3), F64))  # matrix_state refines
