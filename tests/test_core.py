"""Core pipeline vs the lax.scan oracle: lengths, dtypes, pytrees, reverse, length, jit, vmap."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autopar

from .oracle import assert_trees_close, scan_states

LENGTHS = [0, 1, 2, 3, 5, 8, 17, 1001]
DTYPES = [jnp.float32, jnp.float64, jnp.complex64]


def _params(key, D, n_in, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    W = (0.4 / np.sqrt(D)) * jax.random.normal(k1, (D, D))
    U = jax.random.normal(k2, (n_in, D))
    G = jax.random.normal(k3, (n_in, D))
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(W), cast(U), cast(G)


def make_cell(kind, W, U, G):
    if kind == "diagonal":
        def cell(h, x):
            a = jax.nn.sigmoid((x @ G).real).astype(h.dtype)
            return a * h + x @ U
    elif kind == "dense":
        def cell(h, x):
            return W @ h + x @ U
    elif kind == "scalar":
        def cell(h, x):
            return jax.nn.sigmoid(jnp.sum(x).real).astype(h.dtype) * h + x @ U
    elif kind == "nonlinear":
        def cell(h, x):
            return jnp.tanh(W @ h + x @ U)
    else:  # ignores x
        def cell(h, x):
            return 0.5 * h + 1.0
    cell.__name__ = kind
    return cell


@given(
    T=st.sampled_from(LENGTHS),
    D=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["diagonal", "dense", "scalar", "nonlinear", "no-input"]),
    solver=st.sampled_from(["auto", "sequential", "linear"]),
    seed=st.integers(0, 2**16),
)
def test_matches_lax_scan(T, D, dtype, kind, solver, seed):
    if kind == "nonlinear" and solver == "linear":
        solver = "auto"
    if kind == "nonlinear" and jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.float32  # tanh of complex is holomorphic, but keep the nonlinear case real
    key = jax.random.PRNGKey(seed)
    W, U, G = _params(key, D, 3, dtype)
    cell = make_cell(kind, W, U, G)
    h0 = jax.random.normal(jax.random.fold_in(key, 1), (D,)).astype(dtype)
    xs = jax.random.normal(jax.random.fold_in(key, 2), (T, 3)).astype(dtype)
    fn = autopar.parallelize(cell, solver=solver)
    hs, info = fn(h0, xs, return_info=True)
    assert_trees_close(hs, scan_states(cell, h0, xs))
    if T > 0:
        assert bool(info.converged)
        assert float(info.residual) < 1e-3


@pytest.mark.parametrize("solver", ["sequential", "linear"])
@pytest.mark.parametrize("reverse", [False, True])
def test_pytree_state_with_counter_and_mixed_inputs(solver, reverse):
    """(c, h) dict state with an int counter; xs of several dtypes; reverse."""
    key = jax.random.PRNGKey(0)
    D, T = 4, 11
    A = jax.random.normal(key, (2, D), jnp.float32)

    def cell(s, x):
        c, h, n = s["c"], s["h"], s["n"]
        gate = jax.nn.sigmoid(x["u"] @ A)
        c = gate * c + x["u"][0] * (x["k"] % 3).astype(c.dtype)
        h = 0.9 * h + c * gate
        return {"c": c, "h": h.astype(jnp.float64), "n": n + x["k"]}

    s0 = {"c": jnp.ones(D, jnp.float32), "h": jnp.zeros(D, jnp.float64), "n": jnp.array(3, jnp.int32)}
    xs = {"u": jax.random.normal(key, (T, 2), jnp.float32), "k": jnp.arange(T, dtype=jnp.int32)}
    fn = autopar.parallelize(cell, solver=solver)
    got = fn(s0, xs, reverse=reverse)
    want = jax.lax.scan(lambda s, x: (cell(s, x),) * 2, s0, xs, reverse=reverse)[1]
    assert_trees_close(got, want, rtol=1e-5)
    rep = fn.explain(s0, xs)
    assert rep.structure.kind in ("diagonal", "block-diagonal")
    assert rep.linear


@dataclasses.dataclass
class LRUState:
    h: jax.Array
    step: jax.Array


jax.tree_util.register_dataclass(LRUState, data_fields=["h", "step"], meta_fields=[])


def test_dataclass_complex_state():
    D, T = 3, 9
    lam = jnp.exp(-0.1 + 0.5j * jnp.arange(D)).astype(jnp.complex64)

    def lru(s, x):
        return LRUState(lam * s.h + x.astype(jnp.complex64), s.step + 1)

    s0 = LRUState(jnp.zeros(D, jnp.complex64), jnp.array(0))
    xs = jnp.ones((T, D), jnp.float32)
    fn = autopar.parallelize(lru, solver="linear")
    assert_trees_close(fn(s0, xs), scan_states(lru, s0, xs))
    assert fn.explain(s0, xs).structure.kind == "diagonal"


def test_non_holomorphic_complex_cell_falls_back_to_sequential():
    def cell(h, x):
        return jnp.conj(h) * 0.5 + x

    h0 = jnp.ones(2, jnp.complex64)
    xs = jnp.ones((5, 2), jnp.complex64)
    fn = autopar.parallelize(cell)
    rep = fn.explain(h0, xs)
    assert rep.solver == "sequential"
    lin = next(c for c in rep.candidates if c.solver == "linear")
    assert not lin.applies and "conj" in lin.reason
    assert_trees_close(fn(h0, xs), scan_states(cell, h0, xs))
    with pytest.raises(ValueError, match="does not apply"):
        autopar.parallelize(cell, solver="linear")(h0, xs)


@pytest.mark.parametrize("solver", ["sequential", "linear"])
def test_length_without_xs(solver):
    cell = lambda h, x: 0.5 * h + 1.0  # noqa: E731
    fn = autopar.parallelize(cell, solver=solver)
    got = fn(jnp.zeros(3), None, length=6)
    want = jax.lax.scan(lambda h, x: (cell(h, x),) * 2, jnp.zeros(3), None, length=6)[1]
    assert_trees_close(got, want)


@pytest.mark.parametrize("solver", ["sequential", "linear"])
def test_jit_vmap_composition(solver):
    key = jax.random.PRNGKey(1)
    W, U, G = _params(key, 4, 3, jnp.float32)
    cell = make_cell("dense", W, U, G)
    fn = autopar.parallelize(cell, solver=solver)
    h0 = jax.random.normal(key, (6, 4), jnp.float32)
    xs = jax.random.normal(key, (6, 13, 3), jnp.float32)
    got = jax.jit(jax.vmap(fn))(h0, xs)
    want = jax.vmap(lambda h, x: scan_states(cell, h, x))(h0, xs)
    assert_trees_close(got, want)

    @jax.jit
    def outer(h0, xs):  # nested inside other jitted code
        return jnp.sum(fn(h0, xs) ** 2)

    np.testing.assert_allclose(outer(h0[0], xs[0]), jnp.sum(want[0] ** 2), rtol=1e-4)


def test_analysis_and_compile_once_per_signature():
    """The cell is re-read on every call (closed-over values are never stale, as with lax.scan),
    but analysis and XLA compilation happen once per input signature."""
    import autopar.api as api

    analysed = []
    real = api.analyse
    fn = autopar.parallelize(lambda h, x: 0.5 * h + x, solver="linear")
    xs = jnp.ones((7, 2), jnp.float32)
    try:
        api.analyse = lambda rec: analysed.append(1) or real(rec)
        fn(jnp.zeros(2, jnp.float32), xs)
        fn(jnp.ones(2, jnp.float32), xs * 2)  # same signature
        assert len(analysed) == 1 and fn._jitted._cache_size() == 1
        fn(jnp.ones(2, jnp.float32), jnp.ones((9, 2), jnp.float32))  # new length
        assert len(analysed) == 2 and fn._jitted._cache_size() == 2
    finally:
        api.analyse = real


@given(T=st.sampled_from([0, 1, 2, 7, 64]), reverse=st.booleans(), solver=st.sampled_from(["auto", "linear", "sequential"]))
def test_scan_dropin(T, reverse, solver):
    """autopar.scan == lax.scan with y of a different pytree structure than the carry."""
    key = jax.random.PRNGKey(T)
    A = jax.random.normal(key, (3, 2))

    def f(carry, x):
        c, h = carry
        c = jax.nn.sigmoid(x @ A) * c + x[:2]
        h = 0.5 * h + c.sum()
        return (c, h), {"y": c * h, "z": jnp.tanh(x).sum()}

    init = (jnp.ones(2), jnp.array(0.0))
    xs = jax.random.normal(key, (T, 3))
    got = autopar.scan(f, init, xs, reverse=reverse, solver=solver)
    want = jax.lax.scan(f, init, xs, reverse=reverse)
    assert_trees_close(got, want)


def test_scan_length_only_and_explain():
    f = lambda c, _: (c * 0.5 + 1.0, c)  # noqa: E731
    got = autopar.scan(f, jnp.zeros(2), length=5)
    want = jax.lax.scan(f, jnp.zeros(2), length=5)
    assert_trees_close(got, want)
    rep = autopar.explain(f, jnp.zeros(2), length=5)
    assert rep.linear and rep.structure.kind == "scalar"  # J = 0.5·I, proven from the jaxpr
    assert rep.sparsity.shape == (2, 2)


def test_low_precision_state_close_to_scan():
    cell = lambda h, x: (0.9 * h + x).astype(h.dtype)  # noqa: E731
    h0 = jnp.zeros(4, jnp.bfloat16)
    xs = jnp.ones((33, 4), jnp.bfloat16) * 0.1
    got = autopar.parallelize(cell, solver="linear")(h0, xs)
    assert got.dtype == jnp.bfloat16
    assert_trees_close(got, scan_states(cell, h0, xs), rtol=5e-2)


def test_nan_inputs_behave_like_scan():
    cell = lambda h, x: 0.5 * h + x  # noqa: E731
    xs = jnp.ones((6, 2)).at[2, 0].set(jnp.nan)
    got = autopar.parallelize(cell, solver="linear")(jnp.zeros(2), xs)
    want = scan_states(cell, jnp.zeros(2), xs)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize(
    "update, affine",
    [
        (lambda n, x: n + 1, True),
        (lambda n, x: 3 * n + x, True),
        (lambda n, x: n * x - 2, True),  # a_t = x_t
        (lambda n, x: n // 2 + x, False),  # integer division is not affine
        (lambda n, x: n * n + 1, False),
        (lambda n, x: jnp.where(n > 4, 0, n + 1), False),
    ],
)
def test_integer_counters_exact(update, affine):
    """Integer leaves: an elementwise-affine update is solved by an exact integer scan, bit for bit
    (including wraparound); anything else by a sequential scan of its own."""
    def cell(s, x):
        h, n = s
        return 0.5 * h + n.astype(h.dtype)[0], update(n, x).astype(n.dtype)

    s0 = (jnp.zeros(2, jnp.float32), jnp.array([1, 2**30], jnp.int32))
    xs = jnp.arange(1, 40, dtype=jnp.int32)[:, None] * jnp.array([[1, 7]], jnp.int32)
    fn = autopar.parallelize(cell, solver="linear")
    rep = fn.explain(s0, xs)
    assert rep.facts["discrete_affine"] is affine
    assert rep.plan.discrete == ("affine-scan" if affine else "sequential")
    got = fn(s0, xs)
    want = scan_states(cell, s0, xs)
    np.testing.assert_array_equal(got[1], want[1])  # exact, wraparound included
    assert_trees_close(got, want, rtol=1e-5)
