"""The benchmark suite's gradient contenders: the cell's weights are passed as arguments
(``benchmarks.run.parameterized``), and every contender computes the same gradient."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks.cells import make_cell  # noqa: E402
from benchmarks.run import grad_contenders, parameterized  # noqa: E402

CELLS = ("lstm", "lru", "deltanet", "multi-axis", "mamba-ssm")


@pytest.mark.parametrize("name", CELLS)
def test_parameterized_step_is_the_cell_with_its_weights_as_an_argument(name):
    cell, h0, xs_fn, _ = make_cell(name, 4)
    xs = xs_fn(5)
    step, params = parameterized(cell, h0, xs)
    closed = jax.make_jaxpr(cell)(h0, jax.tree_util.tree_map(lambda a: a[0], xs))
    weights = [c for c in closed.consts if jnp.issubdtype(jnp.result_type(c), jnp.inexact)]
    assert params and len(params) == len(weights)
    for p, w in zip(params, weights):
        assert p is w
    x0 = jax.tree_util.tree_map(lambda a: a[1], xs)
    h1 = cell(h0, jax.tree_util.tree_map(lambda a: a[0], xs))
    want, got = cell(h1, x0), step(params, h1, x0)
    assert jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(got)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(a, b)
    # the weights are live: perturbing them changes the step
    moved = step([p * 1.5 for p in params], h1, x0)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(want)))


@pytest.mark.parametrize("name", ("multi-axis", "lstm", "lru"))
def test_grad_contenders_agree_with_lax_scan(name):
    cell, h0, xs_fn, _ = make_cell(name, 4)
    xs = xs_fn(9)
    fns, report = grad_contenders(cell, h0, xs)
    assert {"lax.scan", "auto", "backward=sequential"} <= set(fns)
    want = fns.pop("lax.scan")()
    assert len(want) == 3 and len(jax.tree_util.tree_leaves(want[0])) >= 1  # (weights, h0, xs)
    for label, fn in fns.items():
        got = fn()
        for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            scale = float(np.max(np.abs(a))) or 1.0  # float32 sums of many terms: relative to the leaf
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5 * scale, err_msg=f"{name}: {label}")


def test_model_fit_prices_and_times_both_adjoints(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # its import sets a default: undone after
    from benchmarks.model_fit import fit_backward

    rows = fit_backward("diag-ssm", 16, 1)
    assert set(rows) == {"linear", "sequential"}
    for priced, measured in rows.values():
        assert priced > 0 and np.isfinite(measured)
