"""sympy view: formulas for small elementwise cells and a second opinion on affinity."""

import jax
import jax.numpy as jnp
import numpy as np

import autopar
from tests.oracle import assert_trees_close, scan_states
from tests.passes_helpers import analyse_cell, assert_affine

F64 = jnp.float64
w = jnp.array([0.5, 0.7])


def gru(h, x):
    z = jax.nn.sigmoid(w * h + x)
    return (1 - z) * h + z * jnp.tanh(x - h)


def poly(h, x):
    return (h + 1.0) ** 2 - h * h + x


def test_formula_in_explain():
    rep = autopar.parallelize(gru).explain(jnp.zeros(2, F64), jnp.ones((3, 2), F64))
    text = str(rep)
    assert "formula: h0' = " in text and "sigma(" in text and "tanh(" in text and "h1' = " in text


def test_no_formula_for_large_states():
    _, facts = analyse_cell(lambda h, x: jnp.tanh(h + x), jnp.zeros(64, F64), jnp.ones((2, 64), F64))
    assert not facts.formula


def test_sympy_proves_polynomial_affine_and_linear_solver_is_exact():
    rec, facts = analyse_cell(poly, jnp.zeros(2, F64), jnp.ones((3, 2), F64))
    assert facts.sympy_affine is True and facts.degree == "affine" and facts.linear
    assert any("sympy" in n for n in facts.notes)
    assert_affine(rec)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(9, 2)))
    fn = autopar.parallelize(poly, solver="linear")
    assert_trees_close(fn(jnp.zeros(2, F64), xs), scan_states(poly, jnp.zeros(2, F64), xs), rtol=1e-7)


def test_sympy_does_not_upgrade_domain_restricted_cells():
    # (h² + h)/h "simplifies" to h + 1 but is undefined at h = 0: not affine for every h
    _, facts = analyse_cell(lambda h, x: (h * h + h) / h + x, jnp.zeros(2, F64), jnp.ones((3, 2), F64))
    assert facts.degree == "nonlinear" and not facts.linear
    _, facts = analyse_cell(lambda h, x: h * h + x, jnp.zeros(2, F64), jnp.ones((3, 2), F64))
    assert facts.sympy_affine is False and facts.degree == "nonlinear"
