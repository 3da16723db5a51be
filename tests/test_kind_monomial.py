"""The monomial kind J = P·diag(a) (J v = a ⊙ v[σ]): the worked example of adding a kind.

Recognition (and where it must not fire), soundness against jax.jacfwd, the algebra laws every
kind must satisfy, every solver against lax.scan, gradients, vmap and explain(). Small D and T:
the point is the maths, not the size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.passes.check import primal_step, random_step_inputs
from autopar.structure import Monomial, from_sparsity
from tests.oracle import assert_trees_close, scan_states
from tests.passes_helpers import analyse_cell
from tests.test_gradients import grads, rtol_for

D, T = 5, 7
W = jnp.asarray(np.linspace(0.4, 0.9, D))
PERM = np.array([1, 0, 3, 4, 2])  # a 2-cycle and a 3-cycle


# ---- cells ----------------------------------------------------------------------------------
def roll_tanh(h, x):
    return jnp.tanh(W.astype(h.dtype) * jnp.roll(h, 1) + x)


def roll_affine(h, x):
    return W.astype(h.dtype) * jnp.roll(h, 1) + jnp.sin(x)


def gather_tanh(h, x):
    return jnp.tanh(W.astype(h.dtype) * h[PERM] + x)


def shift_register(h, x):  # a partial permutation: element 0 is reset every step
    return jnp.concatenate([jnp.zeros((1,), h.dtype), 0.9 * h[:-1]]) + x


def head_permutation(h, x):  # (heads, d): heads rotate, each head elementwise
    return jnp.tanh(0.8 * h[jnp.array([2, 0, 1])] + x)


def leaf_swap(h, x):  # two leaves that feed each other
    a, b = h
    return jnp.tanh(0.7 * b + x), 0.5 * a


def roll_plus_diagonal(h, x):  # two entries per row: not monomial (one cycle: dense)
    return jnp.tanh(0.5 * jnp.roll(h, 1) + 0.3 * h + x)


def swap_plus_diagonal(h, x):  # pairs (i, D-1-i) coupled with themselves: 2×2 blocks
    return jnp.tanh(0.5 * h[::-1] + 0.3 * h + x)


def _inputs(cell, dtype=jnp.float64, T=T):
    rng = np.random.default_rng(0)
    if cell is head_permutation:
        return jnp.zeros((3, 2), dtype), jnp.asarray(rng.normal(size=(T, 3, 2)), dtype)
    if cell is leaf_swap:
        return (jnp.zeros(3, dtype), jnp.zeros(3, dtype)), jnp.asarray(rng.normal(size=(T, 3)), dtype)
    return jnp.zeros(D, dtype), jnp.asarray(rng.normal(size=(T, D)), dtype)


MONOMIAL = [roll_tanh, roll_affine, gather_tanh, shift_register, head_permutation, leaf_swap]


# ---- recognition and soundness --------------------------------------------------------------
@pytest.mark.parametrize("cell", MONOMIAL, ids=lambda c: c.__name__)
def test_analysis_reports_monomial(cell):
    rec, facts = analyse_cell(cell, *_inputs(cell))
    st = facts["structure"]
    assert isinstance(st, Monomial), st.describe()
    assert st.kind == "monomial" and st.n_jvps == 1
    assert sorted(st.perm.tolist()) == list(range(rec.size))  # completed to a bijection


@pytest.mark.parametrize("cell,kind", [(roll_plus_diagonal, "dense"), (swap_plus_diagonal, "block-diagonal")],
                         ids=["roll+diag", "swap+diag"])
def test_analysis_stays_dense_or_block(cell, kind):
    _, facts = analyse_cell(cell, *_inputs(cell))
    assert facts["structure"].kind == kind


def test_recognition_order_and_completion():
    assert from_sparsity(np.eye(4, dtype=bool)).kind == "diagonal"  # tighter than monomial
    P = np.zeros((4, 4), bool)
    P[1, 0] = P[2, 1] = P[3, 2] = True  # a shift: row 0 empty, column 3 unused
    st = from_sparsity(P)
    assert st.kind == "monomial" and st.perm.tolist() == [3, 0, 1, 2]
    P[0, 0] = True  # column 0 twice
    assert from_sparsity(P).kind != "monomial"


@pytest.mark.parametrize("cell", MONOMIAL, ids=lambda c: c.__name__)
def test_extraction_sound_against_jacfwd(cell):
    """At random, zero, large and saturated points: J lies in the pattern and one JVP reads it."""
    rec, facts = analyse_cell(cell, *_inputs(cell))
    st = facts["structure"]
    rng = np.random.default_rng(1)
    for scale in (1.0, 0.0, 30.0, 1e4):
        v, disc, xl = random_step_inputs(rec, rng, max(scale, 1.0))
        v = v * scale
        f = primal_step(rec, rec.consts, disc, xl)
        J = np.asarray(jax.jacfwd(f)(v))
        assert not (J != 0)[~st.pattern()].any()
        a = st.extract(jax.linearize(f, v)[1], v.dtype)
        np.testing.assert_allclose(np.asarray(st.to_dense(a)), J, rtol=1e-12, atol=1e-300)


# ---- the algebra every kind must satisfy ------------------------------------------------------
@pytest.mark.parametrize("perm", [[1, 2, 3, 4, 0], PERM.tolist(), [0, 2, 1, 3, 4]], ids=["roll", "cycles", "swap+fixed"])
def test_algebra_laws(perm):
    rng = np.random.default_rng(2)
    st = Monomial(D, np.asarray(perm))
    sigmas = [jnp.asarray(rng.permutation(D), jnp.int32) for _ in range(3)]  # composed permutations are data
    a1, a2, a3 = [(jnp.asarray(rng.normal(size=D)), s) for s in sigmas]
    v = jnp.asarray(rng.normal(size=D))
    dense = st.to_dense
    np.testing.assert_allclose(dense(st.compose(a2, a1)), dense(a2) @ dense(a1), atol=1e-12)
    np.testing.assert_allclose(st.matvec(st.compose(a2, a1), v), st.matvec(a2, st.matvec(a1, v)), atol=1e-12)
    left, right = st.compose(st.compose(a3, a2), a1), st.compose(a3, st.compose(a2, a1))
    np.testing.assert_allclose(dense(left), dense(right), atol=1e-12)
    np.testing.assert_array_equal(left[1], right[1])
    np.testing.assert_allclose(dense(st.transpose(a1)), dense(a1).T, atol=1e-12)
    np.testing.assert_allclose(st.diagonal(a1), np.diag(dense(a1)), atol=0)
    x = jnp.abs(v)
    assert np.all(np.asarray(st.abs_matvec(a1, x)) >= np.abs(np.asarray(dense(a1))) @ np.asarray(x) - 1e-12)
    # the block view (the Kalman smoother's layout) holds the same J, on the static σ's cycles
    a = (a1[0], jnp.asarray(perm, jnp.int32))
    view = st.block_view()
    np.testing.assert_allclose(view.unvec(view.mat(a) @ view.vec(v)), st.matvec(a, v), atol=1e-12)


def test_scan_matches_a_loop_and_a_partial_permutation_resets():
    rng = np.random.default_rng(3)
    P = np.zeros((D, D), bool)
    P[np.arange(1, D), np.arange(D - 1)] = True  # shift register: row 0 empty
    st = from_sparsity(P)
    vals = jnp.asarray(rng.normal(size=(T, D))).at[:, 0].set(0.0)  # what J·1 reads on an empty row
    a = (vals, jnp.broadcast_to(jnp.asarray(st.perm, jnp.int32), (T, D)))
    b, v0 = jnp.asarray(rng.normal(size=(T, D))), jnp.asarray(rng.normal(size=D))
    want, v = [], v0
    for t in range(T):
        v = st.to_dense((vals[t], a[1][t])) @ v + b[t]
        want.append(v)
    np.testing.assert_allclose(st.scan(a, b, v0), jnp.stack(want), atol=1e-12)


# ---- solvers against lax.scan -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("solver,cell", [("linear", roll_affine), ("deer", roll_tanh), ("quasi-deer", gather_tanh),
                                         ("elk", gather_tanh), ("quasi-elk", roll_tanh)])
def test_every_solver_equals_lax_scan(solver, cell, dtype):
    h0, xs = _inputs(cell, dtype)
    # a roll has diag(J) = 0: quasi-elk's damped steps are Picard-like, more than T + 1 of them
    fn = autopar.parallelize(cell, solver=solver, fallback=False, max_iters=64)
    assert fn.explain(h0, xs).structure.kind == "monomial"
    out, info = fn(h0, xs, return_info=True)
    assert info.solver == solver and bool(info.converged)
    assert_trees_close(out, scan_states(cell, h0, xs))


@pytest.mark.parametrize("cell", [head_permutation, leaf_swap, shift_register], ids=lambda c: c.__name__)
def test_pytree_and_matrix_states(cell):
    h0, xs = _inputs(cell)
    assert_trees_close(autopar.parallelize(cell, solver="deer", fallback=False)(h0, xs), scan_states(cell, h0, xs))


def test_reverse_scan():
    h0, xs = _inputs(roll_affine)

    def f(c, x):
        c = roll_affine(c, x)
        return c, 2.0 * c

    got = autopar.scan(f, h0, xs, reverse=True, solver="linear")
    assert_trees_close(got, jax.lax.scan(f, h0, xs, reverse=True))


def _param_cell(p, h, x):
    return jnp.tanh(p["w"] * jnp.roll(h, 1) + p["u"] * x)


@pytest.mark.parametrize("backward", ["linear", "sequential"])
@pytest.mark.parametrize("solver", ["deer", "quasi-deer"])
def test_gradients_equal_lax_scan(solver, backward):
    h0, xs = _inputs(roll_tanh)
    params = {"w": W, "u": jnp.asarray(np.linspace(1.0, 0.5, D))}
    got = grads(_param_cell, params, h0, xs, solver=solver, backward=backward)
    want = grads(_param_cell, params, h0, xs)
    assert_trees_close(got, want, rtol=rtol_for(solver, jnp.float64))


def test_linear_adjoint_of_an_affine_monomial_cell():
    h0, xs = _inputs(roll_affine)
    cell = lambda p, h, x: p * jnp.roll(h, 1) + jnp.sin(x)  # noqa: E731
    got = grads(cell, W, h0, xs, solver="linear", backward="linear")
    assert_trees_close(got, grads(cell, W, h0, xs))


def test_vmap():
    h0, xs = _inputs(roll_tanh)
    xb = jnp.stack([xs, 2.0 * xs, -xs])
    fn = autopar.parallelize(roll_tanh, solver="deer")
    got = jax.vmap(functools.partial(fn, h0))(xb)
    assert_trees_close(got, jax.vmap(functools.partial(scan_states, roll_tanh, h0))(xb))


def test_explain_names_the_kind():
    h0, xs = _inputs(gather_tanh)
    text = str(autopar.parallelize(gather_tanh).explain(h0, xs))
    assert "monomial (permutation: 2 cycles of length 2/3, 0 fixed)" in text
    assert "1 JVP per step" in text
