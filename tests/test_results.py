"""``autopar.Result``: how a solve ended (``Info.result``), each outcome produced by a real cell.

The Newton driver (``autopar.solvers.newton``) stops a stage on tolerance, on ``max_iters``, on a
non-finite iterate or residual, or on a residual past the divergence limit; the chain turns a
later stage's success into ``fell_back``; ``Info.with_residual`` (``return_info=True``) marks any
non-finite trajectory, whatever the solver.
``lax.scan`` is the oracle throughout. Small T and D: the file compiles a handful of programs.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import Result
from autopar.solvers.newton import DIVERGENCE_FACTOR

from .newton_cells import make
from .oracle import assert_trees_close, scan_states

W = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)) * 0.5, jnp.float32)


def tanh_cell(h, x):
    return jnp.tanh(h @ W + x)


H0 = jnp.zeros(3, jnp.float32)
XS = jnp.asarray(np.random.default_rng(1).normal(size=(9, 3)), jnp.float32)


def test_enum_is_exported_and_small():
    assert autopar.Result is Result
    assert [m.name for m in Result] == ["converged", "max_iterations", "diverged", "nonfinite", "fell_back", "stalled"]
    assert str(Result.fell_back) == "fell_back"


def test_max_iterations_without_fallback():
    fn = autopar.parallelize(tanh_cell, solver="deer", max_iters=1, fallback=False)
    _, info = fn(H0, XS, return_info=True)
    assert info.outcome is Result.max_iterations
    assert info.result.dtype == jnp.int32 and int(info.result) == Result.max_iterations
    assert int(info.iterations) == 1 and not bool(info.converged) and info.solver == "deer"
    assert "result='max_iterations'" in repr(info)
    # traced under jit: the code is an int32 array, comparable with the members
    code = jax.jit(lambda xs: fn(H0, xs, return_info=True)[1].result)(XS)
    assert code.dtype == jnp.int32 and bool(code == Result.max_iterations)


@pytest.mark.parametrize("solver", ["sequential", "linear"])
def test_exact_solvers_converge(solver):
    A = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3)) * 0.4, jnp.float32)

    def affine(h, x):
        return h @ A + x

    hs, info = autopar.parallelize(affine, solver=solver)(H0, XS, return_info=True)
    assert info.outcome is Result.converged and bool(info.converged) and info.solver == solver
    assert_trees_close(hs, scan_states(affine, H0, XS))


def test_newton_converges():
    hs, info = autopar.parallelize(tanh_cell, solver="deer", fallback=False)(H0, XS, return_info=True)
    assert info.outcome is Result.converged and info.fallback is None
    assert_trees_close(hs, scan_states(tanh_cell, H0, XS))


def test_nan_inputs_are_nonfinite():
    xs = XS.at[4, 1].set(jnp.nan)
    _, info = autopar.parallelize(tanh_cell, solver="sequential")(H0, xs, return_info=True)
    assert info.outcome is Result.nonfinite and not bool(info.converged)
    # Newton stops at its first iterate: f(V⁰) is already NaN, no iteration is spent
    _, info = autopar.parallelize(tanh_cell, solver="deer", fallback=False)(H0, xs, return_info=True)
    assert info.outcome is Result.nonfinite and int(info.iterations) == 0


def test_nonfinite_trajectories_of_exact_solvers_are_never_converged():
    """The solve does not scan its trajectory for NaN / inf (a cost every call would pay);
    ``return_info`` judges it: eagerly, under jit and for a step with effects (never re-run)."""
    def affine(h, x):
        return 0.5 * h + x

    xs = XS.at[4, 1].set(jnp.nan)
    for solver in ("sequential", "linear"):
        fn = autopar.parallelize(affine, solver=solver)
        for call in (fn, jax.jit(lambda h0, xs, fn=fn: fn(h0, xs, return_info=True))):
            _, info = call(H0, xs) if call is not fn else call(H0, xs, return_info=True)
            assert info.outcome is Result.nonfinite and not bool(info.converged), (solver, call)
            _, info = call(H0, XS) if call is not fn else call(H0, XS, return_info=True)
            assert info.outcome is Result.converged and bool(info.converged), (solver, call)

    def noisy(h, x):  # a step with effects: solved by one lax.scan, never re-run to check it
        jax.debug.callback(lambda: None)
        return 0.5 * h + x

    fn = autopar.parallelize(noisy)
    _, info = fn(H0, xs, return_info=True)
    assert info.outcome is Result.nonfinite and not bool(info.converged) and np.isinf(float(info.residual))
    _, info = fn(H0, XS, return_info=True)
    assert info.outcome is Result.converged and float(info.residual) == 0.0


def test_overflowing_cell_is_nonfinite_or_diverged():
    def blowup(h, x):  # h ← h² + 2 overflows float32 within T = 12 steps
        return h * h + 2.0 + 0.0 * x

    h0, xs = jnp.zeros(1, jnp.float32), jnp.zeros((12, 1), jnp.float32)
    hs, info = autopar.parallelize(blowup, solver="sequential")(h0, xs, return_info=True)
    assert not np.isfinite(np.asarray(hs)).all()
    assert info.outcome is Result.nonfinite
    _, info = autopar.parallelize(blowup, solver="deer", fallback=False)(h0, xs, return_info=True)
    assert info.outcome in (Result.nonfinite, Result.diverged) and not bool(info.converged)


def test_growing_residual_is_diverged():
    """quasi-DEER on Lorenz-96 from h0: the residual grows past DIVERGENCE_FACTOR × max(r⁰, 1)
    while every iterate stays finite."""
    cell, h0, xs_fn = make("lorenz96", 5, jnp.float32)
    fn = autopar.parallelize(cell, solver="quasi-deer", fallback=False, init="h0")
    _, info = fn(h0, xs_fn(64), return_info=True)
    assert info.outcome is Result.diverged and not bool(info.converged)
    hist = np.asarray(info.history)
    hist = hist[~np.isnan(hist)]
    assert np.isfinite(hist).all() and hist.size == int(info.iterations) + 1
    assert hist[-1] > DIVERGENCE_FACTOR * max(hist[0], 1.0)


def test_forced_deer_falls_back():
    """The logistic map (r = 3.9): DEER overflows at once, the chain's later stage gives lax.scan's
    values — the outcome says so."""
    cell, h0, xs_fn = make("logistic", 1, jnp.float32)
    xs = xs_fn(101)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autopar.FallbackWarning)
        hs, info = autopar.parallelize(cell, solver="deer")(h0, xs, return_info=True)
    assert info.outcome is Result.fell_back and bool(info.converged)
    assert info.solver in ("elk", "sequential") and info.fallback is not None
    assert "result='fell_back'" in repr(info)
    if info.solver == "sequential":
        assert_trees_close(hs, scan_states(cell, h0, xs))
    # the same cell without the chain: deer's own failure
    _, info = autopar.parallelize(cell, solver="deer", fallback=False)(h0, xs, return_info=True)
    assert info.outcome in (Result.nonfinite, Result.diverged) and info.solver == "deer"


def test_result_per_sequence_under_vmap():
    xs = jnp.stack([XS, XS.at[2, 0].set(jnp.nan)])
    fn = autopar.parallelize(tanh_cell, solver="sequential")
    _, info = jax.vmap(lambda x: fn(H0, x, return_info=True))(xs)
    assert np.asarray(info.result).tolist() == [Result.converged, Result.nonfinite]
    assert "result=['converged', 'nonfinite']" in repr(info)


def test_stalled_when_the_floor_is_above_tol():
    """A tolerance below float32's rounding floor: the stage stops at the stall (not after
    max_iters) and, unconfirmed by the full measure, ends ``stalled``."""
    fn = autopar.parallelize(tanh_cell, solver="deer", fallback=False, tol=1e-8, max_iters=60)
    _, info = fn(H0.astype(jnp.float32), XS.astype(jnp.float32), return_info=True)
    assert info.outcome is Result.stalled and not bool(info.converged)
    assert int(info.iterations) < 60
