"""Eager calls compile a Newton solver's fallback chain only when its first stage fails."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import autopar

from .newton_cells import make
from .oracle import assert_trees_close, scan_states


def _problem():
    cell, h0, xs_fn = make("gru", 6, jnp.float64)
    return cell, h0, xs_fn(21)


def test_converging_first_stage_compiles_only_it():
    cell, h0, xs = _problem()
    fn = autopar.parallelize(cell, solver="deer")
    hs, info = fn(h0, xs, return_info=True)
    assert_trees_close(hs, scan_states(cell, h0, xs))
    assert info.solver == "deer" and bool(info.converged)
    assert [c[-1] for c in fn._compiled] == ["first"]  # the first-stage program only


def test_failing_first_stage_runs_the_chain_and_warns():
    cell, h0, xs = _problem()
    fn = autopar.parallelize(cell, solver="deer", max_iters=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hs, info = fn(h0, xs, return_info=True)
        jax.effects_barrier()
    assert_trees_close(hs, scan_states(cell, h0, xs))
    assert info.solver != "deer" and info.outcome == autopar.Result.fell_back
    assert any(issubclass(x.category, autopar.FallbackWarning) for x in w)
    assert sorted(c[-1] for c in fn._compiled) == ["first", "rest"]  # the rest from deer's best iterate
    assert int(info.iterations) >= 1 and np.isfinite(np.asarray(info.history)[0])


def test_under_jit_the_chain_is_one_program():
    cell, h0, xs = _problem()
    fn = autopar.parallelize(cell, solver="deer", max_iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hs, info = jax.jit(lambda x: fn(h0, x, return_info=True))(xs)
        jax.effects_barrier()
    assert_trees_close(hs, scan_states(cell, h0, xs))
    assert int(info.solver_index) > 0
