"""Warm starts (``fn(h0, xs, init=hs_prev)``) and the causal window of the Newton solvers: the same
values and gradients as a cold start / lax.scan, fewer iterations, and ``init`` validated up front."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar

from .newton_cells import make
from .oracle import assert_trees_close, scan_states

SOLVERS = ("deer", "quasi-deer", "elk", "quasi-elk")
T = 33


def _problem(name="gru", D=6, dtype=jnp.float64):
    cell, h0, xs_fn = make(name, D, dtype)
    return cell, h0, xs_fn(T)


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_equals_cold_values_and_grads(solver):
    cell, h0, xs = _problem()
    ref = scan_states(cell, h0, xs)
    fn = autopar.parallelize(cell, solver=solver, fallback=False)
    cold, ic = fn(h0, xs, return_info=True)
    # a perturbed previous solution, as after one optimiser step
    warm_init = jax.tree_util.tree_map(lambda a: a + 1e-3 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), ref)
    warm, iw = fn(h0, xs, init=warm_init, return_info=True)
    assert bool(ic.converged) and bool(iw.converged)
    assert_trees_close(warm, ref)
    assert_trees_close(warm, cold)
    assert int(iw.iterations) < int(ic.iterations), (int(iw.iterations), int(ic.iterations))

    def loss(xs, init):
        return jnp.sum(jnp.sin(fn(h0, xs, init=init)))

    g_cold = jax.grad(loss)(xs, None)
    g_warm, g_init = jax.grad(loss, argnums=(0, 1))(xs, warm_init)
    np.testing.assert_allclose(np.asarray(g_warm), np.asarray(g_cold), rtol=1e-9, atol=1e-11)
    assert float(jnp.max(jnp.abs(g_init))) == 0.0  # init is not differentiated (stop_gradient)


def test_warm_start_jit_vmap_pytree_reverse():
    cell, h0, xs_fn = make("diag_lstm", 6, jnp.float64)
    xs = jnp.stack([xs_fn(T), xs_fn(T, jax.random.PRNGKey(5))])
    fn = autopar.parallelize(cell, solver="deer", fallback=False)
    for reverse in (False, True):
        ref = jax.vmap(lambda x: fn(h0, x, reverse=reverse))(xs)
        run = jax.jit(jax.vmap(lambda x, i: fn(h0, x, init=i, reverse=reverse, return_info=True)))
        out, info = run(xs, ref)
        assert_trees_close(out, ref)
        assert np.all(np.asarray(info.iterations) <= 1)  # started at the solution


def test_exact_solvers_ignore_init():
    cell, h0, xs = _problem()
    ref = scan_states(cell, h0, xs)
    junk = jnp.full_like(ref, 1e3)
    out = autopar.parallelize(cell, solver="sequential")(h0, xs, init=junk)
    assert_trees_close(out, ref)


def test_init_validation_names_the_argument():
    cell, h0, xs = _problem()
    fn = autopar.parallelize(cell, solver="deer")
    with pytest.raises(ValueError, match=r"`init` leaf 0 must have shape \(T, \*h0 leaf shape\) = \(33, 6\)"):
        fn(h0, xs, init=jnp.zeros((T - 1, 6)))
    with pytest.raises(ValueError, match="`init` must be a trajectory like the returned hs"):
        fn(h0, xs, init=(jnp.zeros((T, 6)),))
    with pytest.raises(ValueError, match="`init` leaf 0 .* dtype float64; got float32"):
        fn(h0, xs, init=jnp.zeros((T, 6), jnp.float32))
    assert not fn._compiled  # rejected before anything was compiled


@pytest.mark.parametrize("solver", ("deer", "quasi-deer"))
def test_causal_window_equals_scan(solver):
    cell, h0, xs_fn = make("gru", 6, jnp.float64)
    xs = xs_fn(257)  # odd: the static windows 128, 64, 32 do not divide T
    ref = scan_states(cell, h0, xs)
    full = autopar.parallelize(cell, solver=solver, fallback=False)
    fn = autopar.parallelize(cell, solver=solver, fallback=False, causal=32)
    hs, info = fn(h0, xs, return_info=True)
    _, info_full = full(h0, xs, return_info=True)
    assert bool(info.converged) and info.solver == solver
    assert_trees_close(hs, ref)
    assert abs(int(info.iterations) - int(info_full.iterations)) <= 1
    # under jit + vmap (the phase loops run until every sequence fits the next window), and grads
    xb = jnp.stack([xs, xs_fn(257, jax.random.PRNGKey(3))])
    out = jax.jit(jax.vmap(lambda x: fn(h0, x)))(xb)
    assert_trees_close(out, jax.vmap(lambda x: scan_states(cell, h0, x))(xb))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(fn(h0, x))))(xs)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(scan_states(cell, h0, x))))(xs)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-8, atol=1e-10)


def test_causal_widths():
    from autopar.solvers.deer import causal_widths

    assert causal_widths(4096, True) == (2048, 1024, 512, 256)
    assert causal_widths(257, 32) == (128, 64, 32)
    assert causal_widths(40, True) == ()
