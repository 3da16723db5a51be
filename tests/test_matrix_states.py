"""Matrix-valued states: Kronecker / Householder structure, recognition soundness, exact solves."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.passes import analyse
from autopar.kinds.dplr_scan import chunked_dplr_scan
from autopar.solvers.linear import linearize_steps
from autopar.structure import Dense, Diagonal, Scalar
from autopar.structure_matrix import Kronecker, LowRank
from autopar.trace import trace_cell
from tests.oracle import assert_trees_close, scan_states

DK, DV, T = 4, 3, 9


def _unit(k):
    return k / jnp.linalg.norm(k)


# ---- the recurrences (left: S is (dk, dv), S ↦ A S; right: S is (dv, dk), S ↦ S A) ------------
def linattn_left(S, x):
    k, v, _ = x
    return S + jnp.outer(k, v)


def linattn_right(S, x):
    k, v, _ = x
    return S + jnp.outer(v, k)


def mlstm(C, x):
    k, v, g = x
    f, i = jax.nn.sigmoid(g), jnp.exp(-jnp.abs(g))
    return f * C + i * jnp.outer(v, k)


def deltanet_left(S, x):
    k, v, g = x
    k, beta = _unit(k), jax.nn.sigmoid(g)
    return S - beta * jnp.outer(k, k @ S) + beta * jnp.outer(k, v)


def deltanet_right(S, x):
    k, v, g = x
    k, beta = _unit(k), jax.nn.sigmoid(g)
    return S - beta * jnp.outer(S @ k, k) + beta * jnp.outer(v, k)


def gated_deltanet(S, x):
    k, v, g = x
    k, beta, alpha = _unit(k), jax.nn.sigmoid(g), jax.nn.sigmoid(g + 1.0)
    return alpha * (S - beta * jnp.outer(k, k @ S)) + beta * jnp.outer(k, v)


def gated_deltanet_right(S, x):
    k, v, g = x
    k, beta, alpha = _unit(k), jax.nn.sigmoid(g), jax.nn.sigmoid(g + 1.0)
    return alpha * (S - beta * jnp.einsum("ij,j,k->ik", S, k, k)) + beta * jnp.outer(v, k)


NH = 3


def deltaproduct(S, x):
    k, v, g = x  # k: (NH, dk), v: (NH, dv), g: (NH,)
    for j in range(NH):
        kj, beta = _unit(k[j]), 2.0 * jax.nn.sigmoid(g[j])  # beta in (0, 2)
        S = S - beta * jnp.outer(kj, kj @ S) + beta * jnp.outer(kj, v[j])
    return S


def rwkv7(S, x):
    k, v, g = x  # w = exp(-exp(.)) decay, a in (0, 1), kappa-hat unit
    w = jnp.exp(-jnp.exp(0.5 * jnp.tanh(k)))
    kh = _unit(k + 0.3)
    a = jax.nn.sigmoid(k * g)
    return S * w[:, None] - jnp.outer(kh, (a * kh) @ S) + jnp.outer(k, v)


def kda(S, x):
    k, v, g = x
    k, beta = _unit(k), jax.nn.sigmoid(g)
    alpha = jax.nn.sigmoid(k + g)
    S1 = alpha[:, None] * S
    return S1 - beta * jnp.outer(k, k @ S1) + beta * jnp.outer(k, v)


def _inputs(cell, dtype, T=T, seed=0):
    rng = np.random.default_rng(seed)
    if cell is deltaproduct:
        xs = (rng.normal(size=(T, NH, DK)), rng.normal(size=(T, NH, DV)), rng.normal(size=(T, NH)))
    else:
        xs = (rng.normal(size=(T, DK)), rng.normal(size=(T, DV)), rng.normal(size=(T,)))
    right = cell in (linattn_right, mlstm, deltanet_right, gated_deltanet_right)
    S0 = rng.normal(size=(DV, DK) if right else (DK, DV))
    return jnp.asarray(S0, dtype), tuple(jnp.asarray(a, dtype) for a in xs)


# (cell, expected kinds, expected rank)
CASES = [
    (linattn_left, ("kronecker(identity)", "identity"), 0),
    (linattn_right, ("kronecker(identity)", "identity"), 0),
    (mlstm, ("kronecker(scalar)", "scalar"), 0),
    (deltanet_left, ("kronecker(householder)",), 1),
    (deltanet_right, ("kronecker(householder)",), 1),
    (gated_deltanet, ("kronecker(householder)",), 1),
    (gated_deltanet_right, ("kronecker(householder)",), 1),
    (deltaproduct, ("kronecker(householder)",), NH),
    (rwkv7, ("kronecker(householder)",), 1),
    (kda, ("kronecker(householder)",), 1),
]
IDS = [c[0].__name__ for c in CASES]


def _facts(cell, dtype=jnp.float64):
    S0, xs = _inputs(cell, dtype)
    rec = trace_cell(cell, S0, xs)
    return rec, analyse(rec)


def _jac_flat(cell, S, x):
    f = lambda v: cell(v.reshape(S.shape), x).reshape(-1)  # noqa: E731
    return jax.jacfwd(f)(S.reshape(-1))


@pytest.mark.parametrize("cell,kinds,rank", CASES, ids=IDS)
def test_recognised_kind_and_rank(cell, kinds, rank):
    rec, facts = _facts(cell)
    st = facts["structure"]
    assert st.kind in kinds, (st.describe(), facts["matrix_state"])
    ms = facts["matrix_state"]
    assert ms["recognised"] and ms["rank"] == rank
    if isinstance(st, Kronecker):
        assert st.rank == rank


@pytest.mark.parametrize("cell,kinds,rank", CASES, ids=IDS)
def test_extracted_factor_matches_jacfwd(cell, kinds, rank):
    """Convention check: the compact Kronecker form, materialised, equals jax.jacfwd."""
    rec, facts = _facts(cell)
    st = facts["structure"]
    if not isinstance(st, Kronecker):
        pytest.skip("a tighter non-Kronecker kind was proven")
    S0, xs = _inputs(cell, jnp.float64)
    x1 = jax.tree_util.tree_map(lambda a: a[1], xs)
    f = lambda v, x: rec.step(rec.consts, v, [], list(x))[0]  # noqa: E731
    pts = S0.reshape(1, -1)
    _, a = linearize_steps(f, st, pts, jax.tree_util.tree_map(lambda z: z[None], x1))
    a0 = jax.tree_util.tree_map(lambda z: z[0], a)
    J = np.asarray(st.to_dense(a0))
    np.testing.assert_allclose(J, _jac_flat(cell, S0, x1), atol=1e-12)
    np.testing.assert_allclose(np.asarray(st.to_dense(st.transpose(a0))), J.T, atol=1e-12)
    np.testing.assert_allclose(np.asarray(st.diagonal(a0)), np.diag(J), atol=1e-12)
    assert not (np.abs(J) > 1e-14)[~st.pattern()].any()


def row_decay(S, x):
    """S ↦ diag(w) S + k vᵀ: a left action by a diagonal M (kronecker(diagonal))."""
    k, v, g = x
    return S * jax.nn.sigmoid(g + k)[:, None] + jnp.outer(k, v)


@pytest.mark.parametrize("solver", ["linear", "elk"])
def test_diagonal_inner_factor_is_read_by_one_jvp(solver):
    """M = diag(d): J·1 reads d in every row, so extraction needs no factor reader; J is its own
    diagonal, so elk runs its elementwise smoother."""
    S0, xs = _inputs(row_decay, jnp.float64)
    rec, facts = _facts(row_decay)
    st = dataclasses.replace(facts["structure"], reader=None)
    assert st.kind == "kronecker(diagonal)" and st.is_diagonal
    x1 = [a[1] for a in xs]
    f = lambda v: rec.step(rec.consts, v, [], x1)[0]  # noqa: E731
    v = S0.reshape(-1)
    np.testing.assert_allclose(st.to_dense(st.extract(jax.linearize(f, v)[1], v.dtype)), jax.jacfwd(f)(v), atol=1e-12)
    out, info = autopar.parallelize(row_decay, solver=solver, fallback=False)(S0, xs, return_info=True)
    assert bool(info.converged)
    assert_trees_close(out, scan_states(row_decay, S0, xs))


DTYPE_CASES = [pytest.param(c, k, r, dt, id=f"{c.__name__}-{np.dtype(dt).name}")
               for c, k, r in CASES for dt in (jnp.float32, jnp.float64)]


@pytest.mark.parametrize("cell,kinds,rank,dtype", DTYPE_CASES)
def test_linear_solver_matches_scan(cell, kinds, rank, dtype):
    S0, xs = _inputs(cell, dtype, T=11)
    out = autopar.parallelize(cell, solver="linear")(S0, xs)
    assert_trees_close(out, scan_states(cell, S0, xs))


@pytest.mark.parametrize("cell", [gated_deltanet_right, deltaproduct, kda], ids=lambda c: c.__name__)
def test_gradient_through_linear_adjoint(cell):
    S0, xs = _inputs(cell, jnp.float64, T=7)
    par = autopar.parallelize(cell, solver="linear", backward="linear")

    def loss(fn, S0, xs):
        return jnp.sum(jnp.sin(fn(S0, xs)))

    g = jax.grad(lambda s, x: loss(par, s, x), argnums=(0, 1))(S0, xs)
    r = jax.grad(lambda s, x: loss(lambda a, b: scan_states(cell, a, b), s, x), argnums=(0, 1))(S0, xs)
    assert_trees_close(g, r)


def test_heads_inside_cell_and_vmap_outside():
    H = 2
    cell = jax.vmap(deltanet_left)
    rng = np.random.default_rng(3)
    S0 = jnp.asarray(rng.normal(size=(H, DK, DV)))
    xs = (jnp.asarray(rng.normal(size=(T, H, DK))), jnp.asarray(rng.normal(size=(T, H, DV))),
          jnp.asarray(rng.normal(size=(T, H))))
    rec = trace_cell(cell, S0, xs)
    st = analyse(rec)["structure"]
    assert isinstance(st, Kronecker) and st.heads == H and st.rank == 1, st.describe()
    out = autopar.parallelize(cell, solver="linear")(S0, xs)
    assert_trees_close(out, scan_states(cell, S0, xs))
    # vmap over a batch of sequences, outside autopar
    B = 3
    S0b = jnp.asarray(rng.normal(size=(B, DK, DV)))
    xsb = (jnp.asarray(rng.normal(size=(B, T, DK))), jnp.asarray(rng.normal(size=(B, T, DV))), jnp.asarray(rng.normal(size=(B, T))))
    outb = jax.vmap(autopar.parallelize(deltanet_left, solver="linear"))(S0b, xsb)
    refb = jax.vmap(lambda s, x: scan_states(deltanet_left, s, x))(S0b, xsb)
    assert_trees_close(outb, refb)


def test_heads_mixed_not_blockwise():
    """A map that sums over heads is not reported as per-head Kronecker."""

    def cell(S, x):
        k, v, _ = x
        return S + 0.1 * jnp.sum(S, axis=0, keepdims=True) + jnp.einsum("hk,hv->hkv", k, v)

    rng = np.random.default_rng(0)
    S0 = jnp.asarray(rng.normal(size=(2, DK, DV)))
    xs = (jnp.ones((T, 2, DK)), jnp.ones((T, 2, DV)), jnp.ones((T,)))
    facts = analyse(trace_cell(cell, S0, xs))
    assert not isinstance(facts["structure"], Kronecker)


# ---- soundness: perturbations that break the structure ---------------------------------------
A_ = np.random.default_rng(7).normal(size=(DK, DK))
B_ = np.random.default_rng(8).normal(size=(DV, DV))
w_ = np.random.default_rng(9).uniform(0.5, 1.0, size=(DV,))


def both_sides(S, x):
    k, v, _ = x
    return A_ @ S @ B_ + jnp.outer(k, v)


def tanh_state(S, x):
    k, v, g = x
    k = _unit(k)
    return jnp.tanh(S - g * jnp.outer(k, k @ S)) + jnp.outer(k, v)


def column_scaled(S, x):  # S ↦ (I − kkᵀ) S diag(w): acts on both sides
    k, v, _ = x
    k = _unit(k)
    return (S - jnp.outer(k, k @ S)) * w_[None, :] + jnp.outer(k, v)


def sums_passive(S, x):  # a left action plus a sum over the passive axis (a right action)
    k, v, _ = x
    return S - jnp.outer(k, k @ S) - 0.1 * jnp.outer(jnp.sum(S, axis=1), v) + jnp.outer(k, v)


def quadratic(S, x):
    k, v, _ = x
    return S - jnp.outer(k, k @ S) * jnp.sum(S) + jnp.outer(k, v)


def transposed(S, x):  # square state, S ↦ Sᵀ
    k, v, _ = x
    return S.T + jnp.outer(k, k)


@pytest.mark.parametrize("cell", [both_sides, tanh_state, column_scaled, sums_passive, quadratic, transposed],
                         ids=lambda c: c.__name__)
def test_soundness_not_reported(cell):
    rng = np.random.default_rng(1)
    shape = (DK, DK) if cell is transposed else (DK, DV)
    S0 = jnp.asarray(rng.normal(size=shape))
    xs = (jnp.asarray(rng.normal(size=(T, DK))), jnp.asarray(rng.normal(size=(T, DV))), jnp.asarray(rng.normal(size=(T,))))
    facts = analyse(trace_cell(cell, S0, xs))
    assert not isinstance(facts["structure"], Kronecker), facts["structure"].describe()
    assert not facts["matrix_state"]["recognised"]
    # and the answer is still right
    out = autopar.parallelize(cell)(S0, xs)
    assert_trees_close(out, scan_states(cell, S0, xs), rtol=1e-7)


@pytest.mark.parametrize("cell,kinds,rank", CASES, ids=IDS)
def test_claim_holds_numerically(cell, kinds, rank):
    """The proven structure contains J at random points (h and x), as jax.jacfwd sees it."""
    rec, facts = _facts(cell)
    st = facts["structure"]
    rng = np.random.default_rng(11)
    S0, xs = _inputs(cell, jnp.float64)
    for t in range(3):
        S = jnp.asarray(rng.normal(size=S0.shape))
        x = jax.tree_util.tree_map(lambda a: a[t], xs)
        J = np.asarray(_jac_flat(cell, S, x))
        assert not (np.abs(J) > 1e-12)[~st.pattern()].any()
        if isinstance(st, Kronecker):
            q, p = st.q, st.p
            Jm = J.reshape(S.shape + S.shape)
            M = Jm[:, 0, :, 0] if st.side == "left" else Jm[0, :, 0, :]
            expect = np.kron(M, np.eye(p)) if st.side == "left" else np.kron(np.eye(p), M)
            np.testing.assert_allclose(J, expect, atol=1e-12)
            if isinstance(st.inner, LowRank) and st.inner.dkind == "identity":
                assert np.linalg.matrix_rank(M - np.eye(q), tol=1e-9) <= st.rank


# ---- structure algebra and the chunked scan -------------------------------------------------
def test_conventions_left_right_against_jacfwd():
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(DK, DK)))
    S = jnp.asarray(rng.normal(size=(DK, DV)))
    kl = Kronecker(DK * DV, "left", DV, DK, Dense(DK))
    J = jax.jacfwd(lambda v: (A @ v.reshape(DK, DV)).reshape(-1))(S.reshape(-1))
    np.testing.assert_allclose(kl.to_dense(A[None]), J, atol=1e-12)
    np.testing.assert_allclose(J, np.kron(A, np.eye(DV)), atol=1e-12)
    B = jnp.asarray(rng.normal(size=(DV, DV)))
    kr = Kronecker(DK * DV, "right", DK, DV, Dense(DV))
    J = jax.jacfwd(lambda v: (v.reshape(DK, DV) @ B).reshape(-1))(S.reshape(-1))
    np.testing.assert_allclose(kr.to_dense(B.T[None]), J, atol=1e-12)
    np.testing.assert_allclose(J, np.kron(np.eye(DK), B.T), atol=1e-12)


@pytest.mark.parametrize("qd,chunk", [(1, 4), (5, 3), (5, 16)])
def test_chunked_scan_exact(qd, chunk):
    rng = np.random.default_rng(qd + chunk)
    T, H, p, q, r = 13, 2, 3, 5, 2
    d = jnp.asarray(rng.uniform(-1, 1, (T, H, qd)))
    d = d.at[4].set(0.0)  # a zero gate: no ratios of gates are formed
    U = jnp.asarray(rng.normal(size=(T, H, q, r)) * 0.4)
    V = jnp.asarray(rng.normal(size=(T, H, q, r)) * 0.4)
    B = jnp.asarray(rng.normal(size=(T, H, p, q)))
    X0 = jnp.asarray(rng.normal(size=(H, p, q)))

    def step(X, inp):
        d, U, V, B = inp
        X = X * d[:, None, :] + jnp.einsum("hir,har->hia", jnp.einsum("hia,har->hir", X, V), U) + B
        return X, X

    ref = jax.lax.scan(step, X0, (d, U, V, B))[1]
    out = jax.jit(chunked_dplr_scan, static_argnums=5)(d, U, V, B, X0, chunk)
    np.testing.assert_allclose(out, ref, atol=1e-11)


def test_scalar_and_diagonal_inner_cost_is_linear():
    """Kronecker with a scalar / diagonal inner factor costs O(dk·dv) per step, not O(dk²·dv)."""
    dk = dv = 64
    for inner, n in ((Scalar(dk), 1), (Diagonal(dk), dk)):
        st = Kronecker(dk * dv, "left", dv, dk, inner)
        assert st.floats() == n
        assert st.matvec_flops() <= 2 * dk * dv
        assert st.compose_flops() <= dk
    rec, facts = _facts(mlstm)
    st = facts["structure"]
    assert st.floats() <= 1 and st.matvec_flops() <= DK * DV


def test_explain_shows_kind_side_and_rank():
    S0, xs = _inputs(deltaproduct, jnp.float64)
    text = str(autopar.parallelize(deltaproduct).explain(S0, xs))
    assert "kronecker(householder, left, q=4" in text and "rank=3" in text


@pytest.mark.parametrize("solver", ["deer", "elk"])
def test_newton_solvers_on_a_kronecker_state(solver):
    """deer scans with the Kronecker factors; elk materialises them for its smoother (it used to
    crash on the factored compact form when a fallback chain reached it)."""
    S0, xs = _inputs(deltanet_left, jnp.float64, T=9)
    fn = autopar.parallelize(deltanet_left, solver=solver)
    assert isinstance(fn.explain(S0, xs).structure, Kronecker)
    out, info = fn(S0, xs, return_info=True)
    assert bool(info.converged)
    assert_trees_close(out, scan_states(deltanet_left, S0, xs))
