"""One jaxpr evaluator (``_compat.evaluate``) under every interpreter: a step holding a nested
``jax.jit`` (pjit), a ``custom_jvp``, a ``custom_vjp`` and a ``lax.cond`` goes through the analysis
(lattice passes, symbolic, matrix-state), the quasi solvers' diagonal interpreter and custom_vjp
inlining, and every result equals ``lax.scan`` / ``jax.jacfwd``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import _compat, primitives
from autopar.passes.check import check_facts
from autopar.solvers.quasi import interpreted_diagonal
from tests.passes_helpers import analyse_cell

F64 = jnp.float64
D = 4
W = jnp.asarray(np.random.default_rng(0).normal(size=(D, D)) * 0.3, F64)


@jax.custom_jvp
def softclip(x):
    return jnp.tanh(x)


softclip.defjvp(lambda p, t: (softclip(p[0]), t[0] * (1 - jnp.tanh(p[0]) ** 2)))


@jax.custom_vjp
def clipgrad(x):
    return 1.5 * x


clipgrad.defvjp(lambda x: (1.5 * x, None), lambda _, g: (jnp.clip(g, -1.0, 1.0),))


@jax.jit
def mix(h):
    return W @ clipgrad(h)


def cell(h, x):
    a = mix(h)  # pjit around a custom_vjp
    b = jax.lax.cond(x[0] > 0, softclip, jnp.sin, a + x)
    return 0.5 * h + 0.3 * b


def cell_no_cond(h, x):  # the diagonal interpreter's fast path handles no control flow on h
    return 0.5 * h + 0.3 * softclip(mix(h) + x)


def _data():
    h0 = jnp.zeros(D, F64)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(12, D)), F64)
    return h0, xs


def _scan(f, h0, xs):
    return jax.lax.scan(lambda h, x: (f(h, x),) * 2, h0, xs)[1]


def test_pjit_is_a_call_row():
    eqns = jax.make_jaxpr(cell)(*[a[0] if a.ndim > 1 else a for a in _data()]).jaxpr.eqns
    names = {e.primitive.name for e in eqns}
    assert names & {"pjit", "jit"} and "cond" in names
    for n in names:
        assert primitives.row(n) is not None, n


def test_default_interpreter_equals_eval_jaxpr():
    h0, xs = _data()
    closed = jax.make_jaxpr(cell)(h0, xs[0])
    got = _compat.evaluate(closed, [h0 + 0.1, xs[0]], _compat.Interpreter())
    want = _compat.eval_jaxpr(closed.jaxpr, closed.consts, h0 + 0.1, xs[0])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-14)


@pytest.mark.parametrize("f", [cell, cell_no_cond], ids=["cond", "no-cond"])
def test_analysis_is_sound_and_nothing_is_conservative(f):
    h0, xs = _data()
    rec, facts = analyse_cell(f, h0, xs)
    assert facts.conservative == []
    assert facts.custom_vjp == ["clipgrad"] and facts.custom_jvp == ["softclip"]
    assert facts.degree == "nonlinear" and facts.structure.kind == "dense"
    assert facts.step_ops == autopar.costs.step_ops(rec.step_jaxpr)
    check_facts(rec, facts)  # sparsity / structure / linearity against jax.jacfwd


def test_symbolic_and_coefficients_walk_pjit():
    """sympy sees through the nested jit (h + W h - W h is affine); the coefficient lattice proves
    J = 0.5 I through it."""
    h0, xs = _data()

    @jax.jit
    def lin(h):
        return W @ h

    rec, facts = analyse_cell(lambda h, x: (h + x) ** 2 - h**2 + lin(h) - lin(h), h0, xs)
    assert facts.sympy_affine is True and facts.linear
    _, facts = analyse_cell(lambda h, x: jax.jit(lambda v: 0.5 * v)(h) + x, h0, xs)
    assert facts.structure.kind == "scalar"


def test_matrix_state_walks_pjit_and_custom_vjp():
    S0 = jnp.zeros((3, 3), F64)
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3, 3)), F64)
    A = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3)) * 0.3, F64)

    @jax.jit
    def right(S):
        return clipgrad(S) @ A

    rec, facts = analyse_cell(lambda S, x: right(S) + x, S0, xs)
    assert facts.matrix_state["recognised"], facts.matrix_state
    assert facts.structure.kind.startswith("kronecker")


def test_diagonal_interpreter_through_pjit_custom_jvp_and_custom_vjp():
    h0, xs = _data()
    pts = _scan(cell_no_cond, h0, xs)
    _, d = interpreted_diagonal(cell_no_cond, pts, xs)  # raises Unsupported if it fell outside

    def f(v, x):  # the forward problem's Jacobian: custom_vjp differentiates as its primal
        return 0.5 * v + 0.3 * softclip(W @ (1.5 * v) + x)

    want = jax.vmap(lambda v, x: jnp.diagonal(jax.jacfwd(f)(v, x)))(pts, xs)
    np.testing.assert_allclose(d, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("f", [cell, cell_no_cond], ids=["cond", "no-cond"])
@pytest.mark.parametrize("solver", ["quasi-deer", "deer"])
def test_forced_newton_solvers_equal_scan(f, solver):
    h0, xs = _data()
    out, info = autopar.parallelize(f, solver=solver)(h0, xs, return_info=True)
    assert info.solver == solver and info.converged
    np.testing.assert_allclose(out, _scan(f, h0, xs), rtol=1e-10, atol=1e-12)


def test_custom_vjp_inlining_through_jit_and_cond():
    h0, xs = _data()

    def g(h, x):  # the custom_vjp sits inside a jit inside a cond branch
        return jax.lax.cond(x[0] > 0, lambda v: mix(v), lambda v: 2.0 * v, h) + x

    closed = jax.make_jaxpr(g)(h0, xs[0])
    assert _compat.has_custom_vjp(closed)
    inl = _compat.inline_custom_vjp(closed)
    assert not _compat.has_custom_vjp(inl)
    for x in xs[:3]:
        v = h0 + x
        np.testing.assert_allclose(_compat.eval_jaxpr(inl.jaxpr, inl.consts, v, x)[0], g(v, x), rtol=1e-14)
        # differentiable by forward mode now (jax.jvp cannot enter a custom_vjp)
        jax.jvp(lambda v_: _compat.eval_jaxpr(inl.jaxpr, inl.consts, v_, x)[0], (v,), (jnp.ones(D, F64),))
