"""Issue 10, "never a silent wrong answer": the analysis is sound for rounding, custom
derivatives, indexing, nested control flow and the shapes that used to crash it.

* precision-lowering ops (bfloat16 / float16 round trips, reduce_precision, mixed-precision
  matmuls) are not affine — they used to be called linear and the linear solver was 0.6 off;
* custom_jvp calls are analysed by their JVP rule (what every JAX derivative uses), custom_vjp
  calls are flagged (``facts["custom_vjp"]``) and ``_compat.inline_custom_vjp`` makes a cell
  with one linearisable;
* the sparsity pass no longer crashes on scalar dependencies broadcast to vectors, and the
  quasi solvers' diagonal interpreter binds every equation through ``_compat.bind_eqn`` and
  does not run a scan body as if it were a call;
* a sweep of cells: the reported sparsity contains jax.jacfwd's nonzeros at random, saturated,
  zero and large points, and every affine claim is checked on affine combinations.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import _compat
from autopar.solvers import quasi
from autopar.structure import Dense
from tests.passes_helpers import analyse_cell, assert_affine_combination, assert_sparsity_covers

F64, F32, BF16 = jnp.float64, jnp.float32, jnp.bfloat16
D = 4
_rng = np.random.default_rng(7)
A = jnp.asarray(_rng.normal(size=(D, D)) * 0.4)
A32 = A.astype(F32)
W3 = jnp.asarray(_rng.normal(size=(3, 3)))


def _oracle(cell, h0, xs):
    return jax.lax.scan(lambda h, x: (cell(h, x), cell(h, x)), h0, xs)[1]


def _xs(T=12, dtype=F64, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(T, D)), dtype)


# ---- 1. rounding is not affine ------------------------------------------------------------
ROUNDING = {
    "reduce_precision": (lambda h, x: jax.lax.reduce_precision(0.9 * h, exponent_bits=5, mantissa_bits=2) + x, F64),
    "bf16_round_trip": (lambda h, x: (0.9 * h).astype(BF16).astype(h.dtype) + x, F64),
    "f16_round_trip": (lambda h, x: (A @ h).astype(jnp.float16).astype(h.dtype) + x, F64),
    "f32_round_trip_of_f64": (lambda h, x: (A @ h).astype(F32).astype(h.dtype) + x, F64),
    "bf16_matmul": (lambda h, x: (A.astype(BF16) @ h.astype(BF16)).astype(h.dtype) + x, F64),
    "bf16_matmul_f32": (lambda h, x: (A32.astype(BF16) @ h.astype(BF16)).astype(F32) + x, F32),
    "preferred_bf16": (lambda h, x: jnp.dot(A32, h, preferred_element_type=BF16).astype(F32) + x, F32),
    "bf16_inside_jit": (lambda h, x: jax.jit(lambda u: u.astype(BF16).astype(F64))(0.7 * h) + x, F64),
    "bf16_in_scan": (lambda h, x: jax.lax.scan(lambda c, _: ((A @ c).astype(BF16).astype(F64), None), h, None,
                                                length=2)[0] + x, F64),
}


@pytest.mark.parametrize("name", sorted(ROUNDING))
def test_rounding_is_not_linear(name):
    cell, dt = ROUNDING[name]
    h0, xs = jnp.full(D, 0.37, dt), _xs(dtype=dt) * 3
    rec, facts = analyse_cell(cell, h0, xs)
    assert not facts.linear and facts.degree == "nonlinear", (facts.degree, facts.linear)
    assert facts.structure.kind not in ("identity", "scalar")  # those claim exact values: c·h + b
    assert_sparsity_covers(rec, facts)
    rep = autopar.parallelize(cell).explain(h0, xs)
    assert rep.solver != "linear" and not rep.linear
    out = autopar.parallelize(cell)(h0, xs)
    tol = 1e-9 if dt == F64 else 1e-5
    np.testing.assert_allclose(np.asarray(out), np.asarray(_oracle(cell, h0, xs)), rtol=tol, atol=tol)


def test_float_int_float_round_trip_is_not_linear():
    cell = lambda h, x: (3.0 * h).astype(jnp.int32).astype(h.dtype) * 0.5 + x  # noqa: E731
    rec, facts = analyse_cell(cell, jnp.zeros(D, F64), _xs())
    assert not facts.linear and facts.degree in ("piecewise-linear", "nonlinear")
    assert_sparsity_covers(rec, facts)


WIDENING = {
    "f32_to_f64_and_back": (lambda h, x: (h.astype(F64) @ A).astype(F32) + x, F32),  # rounds to the state's own f32
    "same_dtype": (lambda h, x: (A @ h).astype(F64) + x, F64),
    "to_complex": (lambda h, x: (h.astype(jnp.complex128) * (0.5 + 0.25j)).real + x, F64),
    "full_reduce_precision": (lambda h, x: jax.lax.reduce_precision(A @ h, exponent_bits=11, mantissa_bits=52) + x, F64),
    "bf16_state": (lambda h, x: A.astype(BF16) @ h + x, BF16),  # the state itself is stored in bfloat16
}


@pytest.mark.parametrize("name", sorted(WIDENING))
def test_widening_stays_linear(name):
    cell, dt = WIDENING[name]
    rec, facts = analyse_cell(cell, jnp.zeros(D, dt), _xs(dtype=dt))
    assert facts.linear and facts.degree == "affine", facts.degree
    if dt != BF16:
        assert_affine_combination(rec)


def test_rounding_tables_agree():
    """Every pass asks passes.precision; the symbolic second opinion must not re-upgrade a
    rounded polynomial to affine, and the coefficient proof must not claim J = a·I."""
    cell = lambda h, x: ((h + 1.0) ** 2 - h ** 2).astype(BF16).astype(F64) + x  # noqa: E731
    _, facts = analyse_cell(cell, jnp.zeros(3, F64), _xs()[:, :3])
    assert facts.degree == "nonlinear" and facts.sympy_affine is None
    cell = lambda h, x: jax.lax.reduce_precision(h * 2.0, exponent_bits=8, mantissa_bits=7) + x  # noqa: E731
    _, facts = analyse_cell(cell, jnp.zeros(3, F64), _xs()[:, :3])
    assert facts.coefficients is None and facts.structure.kind == "diagonal"


def test_matrix_state_refuses_rounded_tangent():
    S0 = jnp.zeros((3, 3), F32)
    M = jnp.asarray(_rng.normal(size=(3, 3)), F32)
    cell = lambda S, x: (S.astype(BF16) @ M.astype(BF16)).astype(F32) + x  # noqa: E731
    _, facts = analyse_cell(cell, S0, jnp.ones((4, 3, 3), F32))
    assert not facts.linear
    assert not facts.matrix_state["recognised"] or facts.structure.kind != "kronecker"
    _, facts = analyse_cell(lambda S, x: S @ M + x, S0, jnp.ones((4, 3, 3), F32))
    assert facts.matrix_state["recognised"] and facts.linear


# ---- 2. custom derivatives ------------------------------------------------------------------
@jax.custom_jvp
def ste(v):
    return jnp.round(v)


ste.defjvp(lambda p, t: (ste(p[0]), t[0]))


@jax.custom_jvp
def mixtanh(v):
    return jnp.tanh(v)


mixtanh.defjvp(lambda p, t: (jnp.tanh(p[0]), (1 - jnp.tanh(p[0]) ** 2) * t[0] + 0.3 * jnp.roll(t[0], 1)))


@jax.custom_vjp
def clipg(v):
    return v


clipg.defvjp(lambda v: (v, None), lambda r, g: (jnp.clip(g, -1.0, 1.0),))


def test_straight_through_round_is_not_zero():
    rec, facts = analyse_cell(lambda h, x: 0.5 * ste(h) + x, jnp.zeros(D, F64), _xs())
    assert np.array_equal(facts.sparsity, np.eye(D, dtype=bool))
    assert facts.structure.kind != "zero" and not facts.linear
    assert facts.custom_jvp == ["ste"]
    assert_sparsity_covers(rec, facts)


def test_custom_jvp_rule_that_mixes_elements():
    cell = lambda h, x: mixtanh(0.8 * h + x)  # noqa: E731
    rec, facts = analyse_cell(cell, jnp.zeros(D, F64), _xs())
    expect = np.eye(D, dtype=bool) | np.roll(np.eye(D, dtype=bool), 1, axis=0)
    assert (facts.sparsity >= expect).all() and facts.structure.kind != "diagonal"
    assert_sparsity_covers(rec, facts)
    # The adjoint follows J (the rule): the gradient matches lax.scan's.
    h0, xs = jnp.full(D, 0.1, F64), _xs(T=16)
    loss = lambda run: lambda xs: jnp.sum(run(xs) ** 2)  # noqa: E731
    g = jax.grad(loss(lambda xs: autopar.parallelize(cell)(h0, xs)))(xs)
    g_ref = jax.grad(loss(lambda xs: _oracle(cell, h0, xs)))(xs)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-8, atol=1e-10)


def test_linear_custom_jvp_is_not_trusted_and_relu_stays_piecewise():
    @jax.custom_jvp
    def lying(v):
        return 3.0 * v

    lying.defjvp(lambda p, t: (lying(p[0]), 2.0 * t[0]))  # a rule that disagrees with the primal
    _, facts = analyse_cell(lambda h, x: lying(h) + x, jnp.zeros(D, F64), _xs())
    assert not facts.linear
    _, facts = analyse_cell(lambda h, x: jax.nn.relu(A @ h) + x, jnp.zeros(D, F64), _xs())
    assert facts.degree == "piecewise-linear"


def test_custom_jvp_without_a_rule_is_dense(monkeypatch):
    monkeypatch.setattr(_compat, "custom_jvp_rule", lambda eqn: None)
    _, facts = analyse_cell(lambda h, x: 0.5 * ste(h) + x, jnp.zeros(D, F64), _xs())
    assert facts.sparsity.all() and "custom_jvp_call" in facts.conservative


def test_custom_vjp_fact():
    _, facts = analyse_cell(lambda h, x: jnp.tanh(A @ clipg(h) + x), jnp.zeros(D, F64), _xs())
    assert facts.custom_vjp == ["clipg"]
    _, facts = analyse_cell(lambda h, x: jnp.tanh(A @ h + clipg(x)), jnp.zeros(D, F64), _xs())
    assert facts.custom_vjp == []  # only x goes through it
    _, facts = analyse_cell(lambda h, x: jnp.tanh(A @ h + x), jnp.zeros(D, F64), _xs())
    assert facts.custom_vjp == [] and facts.custom_jvp == []


INLINE = {  # cell builders: op is clipg, or the identity (clipg's primal) for the reference
    "top": lambda op: lambda h: jnp.tanh(op(A @ h)),
    "jit": lambda op: lambda h: jax.jit(lambda u: jnp.sin(op(u)))(h),
    "scan": lambda op: lambda h: jax.lax.scan(lambda c, _: (jnp.tanh(op(A @ c)), None), h, None, length=3)[0],
    "cond": lambda op: lambda h: jax.lax.cond(h[0] > 0, lambda u: op(u) * 2.0, lambda u: -u, h),
    "fori": lambda op: lambda h: jax.lax.fori_loop(0, 2, lambda i, c: op(c) * 0.5 + c[0], h),
    "remat": lambda op: lambda h: jax.checkpoint(lambda u: op(u) ** 2)(h),
}


@pytest.mark.parametrize("where", sorted(INLINE))
def test_inline_custom_vjp(where):
    f = INLINE[where](clipg)
    h = jnp.asarray([0.3, -0.2, 0.5, 0.1], F64)
    closed = jax.make_jaxpr(f)(h)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda v: jax.core.eval_jaxpr(closed.jaxpr, closed.consts, v)[0], (h,), (h,))
    inl = _compat.inline_custom_vjp(closed)
    assert not _compat._has_custom_vjp(inl.jaxpr)
    g = lambda v: jax.core.eval_jaxpr(inl.jaxpr, inl.consts, v)[0]  # noqa: E731
    y, lin = jax.linearize(g, h)
    np.testing.assert_allclose(np.asarray(y), np.asarray(f(h)), rtol=1e-14)
    # clipg's primal is the identity: the linearisation is that of the cell without it
    plain = INLINE[where](lambda v: v)
    np.testing.assert_allclose(np.asarray(jax.vmap(lin)(jnp.eye(4, dtype=F64)).T),
                               np.asarray(jax.jacfwd(plain)(h)), rtol=1e-12, atol=1e-14)


def test_inline_custom_vjp_without_custom_vjp_is_identity():
    closed = jax.make_jaxpr(lambda h: jnp.tanh(h))(jnp.ones(3))
    assert _compat.inline_custom_vjp(closed) is closed


def test_matrix_state_with_custom_vjp_does_not_crash():
    M = jnp.asarray(_rng.normal(size=(3, 3)))
    _, facts = analyse_cell(lambda S, x: clipg(S) @ M + x, jnp.zeros((3, 3), F64), jnp.ones((4, 3, 3), F64))
    assert facts.custom_vjp == ["clipg"] and facts.matrix_state["recognised"]


# ---- 3. crashes ---------------------------------------------------------------------------
W_VEC = jnp.asarray([1.0, 2.0, 3.0])
SCALAR_BROADCAST = {
    "max_of_sum_times_w": lambda h, x: jnp.max(jnp.sum(h) * W_VEC) * jnp.ones(3) * 0.1 + x,
    "transpose": lambda h, x: (jnp.sum(h) * W_VEC).reshape(3, 1).T.reshape(3) + x,
    "rev": lambda h, x: (jnp.sum(h) * W_VEC)[::-1] + x,
    "cumsum": lambda h, x: jnp.cumsum(jnp.sum(h) * W_VEC) + x,
    "sort": lambda h, x: jnp.sort(jnp.sum(h) * W_VEC + x),
    "slice": lambda h, x: jnp.concatenate([(h[0] * W_VEC)[1:], x[:1]]),
    "select": lambda h, x: jnp.where(x > 0, jnp.sum(h) * W_VEC, h) + x,
    "and_mask": lambda h, x: (jnp.sum(h) * W_VEC) * (x > 0) + x,
}


@pytest.mark.parametrize("name", sorted(SCALAR_BROADCAST))
def test_scalar_dependencies_broadcast(name):
    rec, facts = analyse_cell(SCALAR_BROADCAST[name], jnp.ones(3, F64), jnp.ones((4, 3), F64))
    assert_sparsity_covers(rec, facts)


def test_quasi_binds_through_compat():
    """relu is a jit around a custom_jvp: binding its params directly raised KeyError('subfuns')."""
    cell = lambda h, x: jnp.tanh(h @ W3 + jax.nn.relu(x))  # noqa: E731
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)))
    out = autopar.parallelize(cell, solver="quasi-deer")(jnp.ones(3), xs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_oracle(cell, jnp.ones(3), xs)), rtol=1e-9, atol=1e-12)


QUASI_CELLS = {
    "relu_h": lambda h, x: jnp.tanh(W3 @ jax.nn.relu(h) + x),
    "ste": lambda h, x: jnp.tanh(W3 @ ste(h) + x),
    "ste_direct": lambda h, x: 0.5 * ste(h) + jnp.tanh(W3 @ h + x),
    "mixtanh": lambda h, x: mixtanh(W3 @ h + x),
    "clipg": lambda h, x: jnp.tanh(W3 @ clipg(h) + x),
    "scan": lambda h, x: jax.lax.scan(lambda c, _: (jnp.tanh(W3 @ c + x), None), h, None, length=2)[0],
    "scan_xs": lambda h, x: jax.lax.scan(lambda c, xi: (jnp.tanh(W3 @ c + xi), None), h, jnp.stack([x, 2 * x]))[0],
    "fori": lambda h, x: jax.lax.fori_loop(0, 2, lambda i, c: jnp.tanh(W3 @ c + x), h),
    "while": lambda h, x: jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (jnp.tanh(W3 @ c[0] + x), c[1] + 1),
                                             (h, 0))[0],
    "cond_on_h": lambda h, x: jax.lax.cond(h[0] > 0, lambda u: jnp.tanh(W3 @ u + x), lambda u: jnp.sin(u) + x, h),
    "switch_on_h": lambda h, x: jax.lax.switch(jnp.clip(h[0].astype(jnp.int32), 0, 1),
                                               [lambda u: jnp.tanh(W3 @ u + x), lambda u: jnp.sin(u) + x], h),
    "checkpoint": lambda h, x: jax.checkpoint(lambda u: jnp.tanh(W3 @ u + x))(h),
}


@pytest.mark.parametrize("name", sorted(QUASI_CELLS))
def test_quasi_diagonal_is_exact(name):
    """diag J and f from the quasi solvers' diagonal route equal jax.jacfwd's and f's (a scan body
    used to be run once as if it were a call: wrong values, or a rank mismatch with xs)."""
    cell = QUASI_CELLS[name]
    rng = np.random.default_rng(3)
    P = jnp.asarray(rng.normal(size=(5, 3)))
    X = jnp.asarray(rng.normal(size=(5, 3)))
    fv, d = quasi.diagonal_steps(cell, Dense(3), P, X)
    plain = cell if name != "clipg" else (lambda h, x: jnp.tanh(W3 @ h + x))
    for t in range(5):
        np.testing.assert_allclose(np.asarray(fv[t]), np.asarray(cell(P[t], X[t])), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(d[t]), np.diagonal(np.asarray(jax.jacfwd(plain)(P[t], X[t]))),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["scan", "scan_xs", "fori", "ste_direct", "mixtanh", "cond_on_h"])
def test_quasi_deer_matches_scan(name):
    cell = QUASI_CELLS[name]
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(8, 3)))
    out = autopar.parallelize(cell, solver="quasi-deer")(jnp.full(3, 0.3), xs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_oracle(cell, jnp.full(3, 0.3), xs)), rtol=1e-9, atol=1e-12)


# ---- 4. a soundness sweep ---------------------------------------------------------------
PERM = jnp.asarray([2, 0, 3, 1])
SWEEP = {
    "roll": lambda h, x: jnp.tanh(jnp.roll(h, 1) * x),
    "gather": lambda h, x: jnp.tanh(h[PERM] + x),
    "scatter": lambda h, x: h.at[PERM[:2]].add(jnp.sin(h[:2]) * x[:2]),
    "scatter_set": lambda h, x: h.at[1].set(h[3] * x[0]),
    "cumsum": lambda h, x: jnp.cumsum(jnp.tanh(h + x)),
    "sort": lambda h, x: jnp.sort(h * x),
    "where_on_h": lambda h, x: jnp.where(h > 0, A @ h, 0.1 * h) + x,
    "scan": lambda h, x: jax.lax.scan(lambda c, xi: (jnp.tanh(c * xi + jnp.roll(c, 1)), None), h, jnp.stack([x, x]))[0],
    "fori": lambda h, x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.tanh(c[::-1] + x), h),
    "while": lambda h, x: jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (jnp.sin(c[0]) + x, c[1] + 1), (h, 0))[0],
    "cond": lambda h, x: jax.lax.cond(h[0] > 0, lambda u: jnp.roll(u, 1), lambda u: u * x, h),
    "custom_jvp_ste": lambda h, x: ste(h) * x,
    "custom_jvp_mix": lambda h, x: mixtanh(h * x),
    "custom_vjp": lambda h, x: jnp.tanh(clipg(h) * x + jnp.roll(h, 2)),
    "checkpoint": lambda h, x: jax.checkpoint(lambda u: jnp.exp(-u * u) * x)(h),
    "reduce_precision": lambda h, x: jax.lax.reduce_precision(A @ h, exponent_bits=8, mantissa_bits=7) + x,
    "bf16_round_trip": lambda h, x: (A @ h).astype(BF16).astype(F64) * x,
    "int_round_trip": lambda h, x: (h * 4).astype(jnp.int32).astype(F64) + h * x,
    "scalar_broadcast": lambda h, x: jnp.max(jnp.sum(h) * x) * jnp.ones(D) + h,
    "linear_mix": lambda h, x: A @ h[::-1] + jnp.cumsum(h) * 0.1 + x,
    "linear_gather_scan": lambda h, x: jax.lax.scan(lambda c, _: (A @ c[PERM], None), h, None, length=2)[0] + x,
}


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_sweep_sound(name):
    rec, facts = analyse_cell(SWEEP[name], jnp.zeros(D, F64), _xs())
    assert_sparsity_covers(rec, facts, seed=zlib.crc32(name.encode()) % 1000)
    if facts.linear:
        assert_affine_combination(rec, seed=1)
    if name.startswith("linear"):
        assert facts.linear
    if name in ("reduce_precision", "bf16_round_trip", "custom_jvp_ste", "custom_jvp_mix"):
        assert not facts.linear


# ---- details ------------------------------------------------------------------------------
def test_mixed_precision_state_layout_casts_are_exempt():
    """The layout keeps an f32 and an f64 leaf in one f64 vector and casts the f32 part back:
    that is storage, not a rounding of the cell; rounding the f64 leaf to f32 is."""
    s0 = {"a": jnp.zeros(2, F32), "b": jnp.zeros(3, F64)}
    xs = jnp.ones((5, 3), F64)
    lin = lambda s, x: {"a": 0.5 * s["a"] + 1.0, "b": 0.9 * s["b"] + x}  # noqa: E731
    rec, facts = analyse_cell(lin, s0, xs)
    assert facts.linear
    assert_affine_combination(rec, rtol=1e-6)
    rnd = lambda s, x: {"a": 0.5 * s["a"], "b": (0.9 * s["b"]).astype(F32).astype(F64) + x}  # noqa: E731
    _, facts = analyse_cell(rnd, s0, xs)
    assert not facts.linear


def test_constfold_does_not_fold_inexact_conversions():
    from autopar.passes.constfold import fold

    def eqn_of(f, *args):
        return jax.make_jaxpr(f)(*args).jaxpr.eqns[-1]

    e = eqn_of(lambda v: v.astype(F32), np.ones(3, np.float64))
    assert fold(e, [np.ones(3)]) is None  # narrowing float cast: XLA's rounding is not numpy's
    e = eqn_of(lambda v: v.astype(jnp.int32), np.ones(3, np.float64))
    assert fold(e, [np.array([1.0, np.nan, 2.0])]) is None
    assert fold(e, [np.array([1.0, 3e10, 2.0])]) is None
    np.testing.assert_array_equal(fold(e, [np.array([1.7, -2.5, 2.0])])[0], [1, -2, 2])
    e = eqn_of(lambda v: v.astype(jnp.int8), np.ones(3, np.int32))
    np.testing.assert_array_equal(fold(e, [np.array([1, 300, -2], np.int32)])[0], np.array([1, 300, -2]).astype(np.int8))


def test_check_true_runs_on_custom_vjp_cells():
    cell = lambda h, x: jnp.tanh(A @ clipg(h) + x)  # noqa: E731
    out = autopar.parallelize(cell, check=True)(jnp.zeros(D, F64), _xs())
    np.testing.assert_allclose(np.asarray(out), np.asarray(_oracle(cell, jnp.zeros(D, F64), _xs())), rtol=1e-9)


def test_call_subjaxpr_is_only_for_calls():
    closed = jax.make_jaxpr(lambda h: jax.lax.scan(lambda c, _: (c * 2.0, None), h, None, length=3)[0])(jnp.ones(2))
    (eqn,) = closed.jaxpr.eqns
    assert eqn.primitive.name == "scan" and _compat.call_subjaxpr(eqn) is None
    closed = jax.make_jaxpr(lambda h: jax.checkpoint(jnp.sin)(h))(jnp.ones(2))
    assert _compat.call_subjaxpr(closed.jaxpr.eqns[0]) is not None


# ---- 4. gathers / scatters that may break their in-bounds promise ---------------------------
# Under PROMISE_IN_BOUNDS (jnp's default for ``h.at[i].get()`` / ``.set()``) an out-of-bounds
# index is clamped by the gather and its JVP but dropped by the transposed scatter-add, so
# jax.jacfwd and jax.jacrev of the cell disagree; lax.scan's gradient is the reverse one. The
# fuzzer found it (seeds 6113, 7036): the linear adjoint, which reads J by forward mode, was
# 0.22 off. Such a cell's backward runs per step.
IDX_OOB = np.array([0, 3, 5, -9])  # 5 and -9 are out of bounds for D = 4
IDX_OK = np.array([3, 0, 1, 2])
INDEXING = {
    "get_oob": (lambda h, x: 0.5 * jnp.tanh(h.at[IDX_OOB].get()) + x, True),
    "set_oob": (lambda h, x: jnp.tanh(0.6 * h).at[IDX_OOB].set(0.3 * h, mode="promise_in_bounds") + x, True),
    "set_drop_oob": (lambda h, x: jnp.tanh(0.6 * h).at[IDX_OOB].set(0.3 * h) + x, False),  # jnp's default: drop
    "get_in_bounds": (lambda h, x: 0.5 * jnp.tanh(h.at[IDX_OK].get()) + x, False),
    "get_clip_oob": (lambda h, x: 0.5 * jnp.tanh(h.at[IDX_OOB].get(mode="clip")) + x, False),
    "get_fill_oob": (lambda h, x: 0.5 * jnp.tanh(h.at[IDX_OOB].get(mode="fill", fill_value=0.0)) + x, False),
    "get_h_dependent_index": (lambda h, x: 0.5 * h[jnp.argsort(h)] + x, True),  # unproven: conservative
    "dynamic_index": (lambda h, x: 0.5 * h.at[jnp.argmax(h)].get() + 0.5 * h + x, False),  # dynamic_slice clamps both ways
}


@pytest.mark.parametrize("name", sorted(INDEXING))
def test_unsafe_indexing_flag_and_ad_consistency(name):
    cell, flagged = INDEXING[name]
    h0 = jnp.linspace(-0.5, 0.7, D)
    _, facts = analyse_cell(cell, h0, _xs(3))
    assert bool(facts["unsafe_indexing"]) == flagged, facts["unsafe_indexing"]
    if not flagged:  # sound: whatever is not flagged has one linear derivative
        x = _xs(1)[0]
        for v in (h0, jnp.zeros(D), 30.0 * h0):
            np.testing.assert_allclose(jax.jacfwd(cell)(v, x), jax.jacrev(cell)(v, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["get_oob", "set_oob"])
@pytest.mark.parametrize("solver", ["sequential", "deer", "quasi-deer", "auto"])
def test_unsafe_indexing_gradient_matches_scan(name, solver):
    cell, _ = INDEXING[name]
    h0, xs = jnp.linspace(-0.5, 0.7, D), _xs(9)
    fn = autopar.parallelize(cell, solver=solver)
    assert "per step" in fn.explain(h0, xs).plan.reason or fn.explain(h0, xs).plan.backward == "sequential"
    loss = lambda run: lambda h, x: jnp.sum(jnp.sin(run(h, x)))  # noqa: E731
    want = jax.grad(loss(lambda h, x: _oracle(cell, h, x)), argnums=(0, 1))(h0, xs)
    got = jax.grad(loss(fn), argnums=(0, 1))(h0, xs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
    with pytest.raises((ValueError, autopar.AutoparError), match="in bounds"):
        jax.grad(loss(autopar.parallelize(cell, solver=solver if solver != "auto" else "deer", backward="linear")))(h0, xs)
