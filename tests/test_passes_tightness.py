"""Tightness: known cells get their exact kind, block size and degree; and the linear solver
reproduces lax.scan on the identity / scalar / permuted-block cells the analysis now proves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from tests.oracle import assert_trees_close, scan_states
from tests.passes_helpers import analyse_cell, assert_affine, assert_sound

F64 = jnp.float64
rng = np.random.default_rng(0)
n = 4
Wd = {k: jnp.asarray(rng.normal(size=(n,))) for k in ("z", "r", "h", "f", "i", "o", "g")}
U = {k: jnp.asarray(rng.normal(size=(n, n))) for k in ("z", "r", "h", "f", "i", "o", "g")}
Wfull = {k: jnp.asarray(rng.normal(size=(n, n)) / 2) for k in ("z", "r", "h", "f", "i", "o", "g")}
sig = jax.nn.sigmoid


def diag_gru(h, x):  # minimal GRU with diagonal recurrence
    z = sig(Wd["z"] * h + U["z"] @ x)
    return (1 - z) * h + z * jnp.tanh(Wd["h"] * h + U["h"] @ x)


def diag_gru_reset(h, x):  # with a diagonal reset gate
    z = sig(Wd["z"] * h + U["z"] @ x)
    r = sig(Wd["r"] * h + U["r"] @ x)
    return (1 - z) * h + z * jnp.tanh(Wd["h"] * (r * h) + U["h"] @ x)


def indrnn(h, x):
    return jax.nn.relu(Wd["h"] * h + U["h"] @ x)


Hh, d = 3, 2
Wb = jnp.asarray(rng.normal(size=(Hh, d, d)))
Ub = jnp.asarray(rng.normal(size=(Hh * d, n)))


def block_rnn(h, x):  # multi-head: h (H, d), each head its own d×d recurrence
    return jnp.tanh(jnp.einsum("hij,hj->hi", Wb, h) + (Ub @ x).reshape(Hh, d))


def diag_lstm(s, x):  # (c, h) LSTM with diagonal recurrences
    c, h = s
    f = sig(Wd["f"] * h + U["f"] @ x)
    i = sig(Wd["i"] * h + U["i"] @ x)
    o = sig(Wd["o"] * h + U["o"] @ x)
    g = jnp.tanh(Wd["g"] * h + U["g"] @ x)
    c2 = f * c + i * g
    return (c2, o * jnp.tanh(c2))


def full_gru(h, x):
    z = sig(Wfull["z"] @ h + U["z"] @ x)
    r = sig(Wfull["r"] @ h + U["r"] @ x)
    return (1 - z) * h + z * jnp.tanh(Wfull["h"] @ (r * h) + U["h"] @ x)


def full_lstm(s, x):
    c, h = s
    f = sig(Wfull["f"] @ h + x)
    i = sig(Wfull["i"] @ h + x)
    o = sig(Wfull["o"] @ h + x)
    g = jnp.tanh(Wfull["g"] @ h + x)
    c2 = f * c + i * g
    return (c2, o * jnp.tanh(c2))


N = 3
A_log = jnp.asarray(rng.normal(size=(n, N)))


def mamba(h, x):  # selective SSM: h (n, N), Δ and B from x
    delta = jax.nn.softplus(x)[:, None]
    B = jnp.tanh(x)[None, :N]
    return jnp.exp(-delta * jnp.exp(A_log)) * h + delta * B * x[:, None]


w_gate = jnp.asarray(rng.normal(size=(n,)))


def ema_scalar(h, x):  # one scalar gate per step from x
    a = sig(w_gate @ x)
    return a * h + (1 - a) * x


def ema_const(h, x):
    return 0.9 * h + 0.1 * x


def cumulative_sum(h, x):
    return h + x


def cumsum_tree(s, x):  # identity on a pytree state
    return {"a": s["a"] + x, "b": s["b"] - 2.0 * x[:2]}


PERM = jnp.array([1, 0, 3, 2])


def permuted_pairs(h, x):
    return 0.5 * h[PERM] + x


def stacked(s, x):
    h1, h2 = s
    n1 = jnp.tanh(Wfull["z"] @ h1 + x)
    n2 = jnp.tanh(Wfull["r"] @ h2 + Wfull["h"] @ n1)
    return (n1, n2)


def no_feedback(h, x):
    return jnp.tanh(x)


z4 = jnp.zeros(n, F64)
CASES = [
    # cell, h0, expected kind, block size (or None), degree
    (diag_gru, z4, "diagonal", None, "nonlinear"),
    (diag_gru_reset, z4, "diagonal", None, "nonlinear"),
    (indrnn, z4, "diagonal", None, "piecewise-linear"),
    (block_rnn, jnp.zeros((Hh, d), F64), "block-diagonal", d, "nonlinear"),
    (diag_lstm, (z4, z4), "block-diagonal", 2, "nonlinear"),
    (full_gru, z4, "dense", None, "nonlinear"),
    (full_lstm, (z4, z4), "dense", None, "nonlinear"),
    (mamba, jnp.zeros((n, N), F64), "diagonal", None, "affine"),
    (ema_scalar, z4, "scalar", None, "affine"),
    (ema_const, z4, "scalar", None, "affine"),
    (cumulative_sum, z4, "identity", None, "affine"),
    (cumsum_tree, {"a": z4, "b": jnp.zeros(2, F64)}, "identity", None, "affine"),
    (permuted_pairs, z4, "monomial", None, "affine"),  # a permutation: tighter than its 2×2 blocks
    (stacked, (z4, z4), "dense", None, "nonlinear"),
    (no_feedback, z4, "zero", None, "constant"),
]


@pytest.mark.parametrize("cell,h0,kind,block,degree", CASES, ids=[c[0].__name__ for c in CASES])
def test_known_cells(cell, h0, kind, block, degree):
    xs = jnp.asarray(rng.normal(size=(5, n)))
    rec, facts = analyse_cell(cell, h0, xs)
    st = facts.structure
    assert st.kind == kind, (st.describe(), facts.sparsity.astype(int))
    if block is not None:
        assert st.block_size == block
    assert facts.degree == degree
    assert facts.conservative == []
    assert_sound(rec, facts, n_points=2)
    if facts.linear:
        assert_affine(rec)


def test_stacked_layers_are_block_triangular():
    xs = jnp.ones((3, n), F64)
    _, facts = analyse_cell(stacked, (z4, z4), xs)
    tri = facts.block_triangular
    assert tri is not None and tri["sizes"] == [4, 4]
    assert tri["blocks"] == [list(range(4)), list(range(4, 8))]
    assert any("block lower-triangular" in s for s in facts.notes)


@pytest.mark.parametrize("cell,h0,ncolors", [
    (diag_gru, z4, 1), (diag_lstm, (z4, z4), 2), (full_gru, z4, n), (block_rnn, jnp.zeros((Hh, d), F64), d),
])
def test_colouring(cell, h0, ncolors):
    _, facts = analyse_cell(cell, h0, jnp.ones((3, n), F64))
    assert facts.colors["n"] == ncolors
    col = facts.colors["coloring"]
    S = facts.sparsity
    for r in range(S.shape[0]):  # a valid colouring: no two columns of one row share a colour
        cs = col[S[r]]
        assert len(cs) == len(set(cs.tolist()))


@pytest.mark.parametrize("cell,h0", [
    (cumulative_sum, z4), (cumsum_tree, {"a": z4, "b": jnp.zeros(2, F64)}), (ema_scalar, z4), (ema_const, z4),
    (permuted_pairs, z4), (mamba, jnp.zeros((n, N), F64)),
], ids=lambda c: getattr(c, "__name__", ""))
def test_linear_solver_matches_scan(cell, h0):
    xs = jnp.asarray(rng.normal(size=(17, n)))
    fn = autopar.parallelize(cell, solver="linear")
    assert_trees_close(fn(h0, xs), scan_states(cell, h0, xs))
    rep = fn.explain(h0, xs)
    assert rep.solver == "linear"
