"""Degree lattice: constant / affine / piecewise-linear / nonlinear, through nested jaxprs and loops."""

import jax
import jax.numpy as jnp
import pytest

from tests.passes_helpers import analyse_cell

F64 = jnp.float64
M = jnp.arange(16.0).reshape(4, 4) / 10


@jax.custom_jvp
def lin_custom(v):
    return 3.0 * v


lin_custom.defjvp(lambda p, t: (lin_custom(p[0]), 3.0 * t[0]))


CASES = [
    (lambda h, x: x * 2.0, "constant"),
    (lambda h, x: M @ h + x, "affine"),
    (lambda h, x: jnp.where(x > 0, h, -h) * x, "affine"),  # selector depends on x only
    (lambda h, x: jax.jit(lambda u: u * x)(h), "affine"),
    # JAX differentiates a custom_jvp with its rule; that the rule matches an affine primal is
    # not proven, so an h-dependent call is conservatively nonlinear (never the linear solver).
    (lambda h, x: lin_custom(h) + x, "nonlinear"),
    (lambda h, x: jax.checkpoint(lambda u: M @ u)(h), "affine"),
    (lambda h, x: jax.nn.relu(h) + x, "piecewise-linear"),
    (lambda h, x: jnp.abs(M @ h), "piecewise-linear"),
    (lambda h, x: jnp.maximum(h, x), "piecewise-linear"),
    (lambda h, x: jnp.where(h > 0, h, 0.1 * h), "piecewise-linear"),
    (lambda h, x: h * (h > 0), "piecewise-linear"),  # affine × step
    (lambda h, x: jnp.floor(h) + x, "piecewise-linear"),  # step function
    (lambda h, x: jnp.sort(h) * 2.0, "piecewise-linear"),
    (lambda h, x: jnp.clip(h, -1, 1), "piecewise-linear"),
    (lambda h, x: jax.lax.cond(h[0] > 0, lambda u: u, lambda u: 2 * u, h), "piecewise-linear"),
    (lambda h, x: jax.lax.cond(x[0] > 0, lambda u: u, lambda u: 2 * u, h), "affine"),
    (lambda h, x: jnp.tanh(h), "nonlinear"),
    (lambda h, x: h * h, "nonlinear"),
    (lambda h, x: h / (1.0 + x * x), "affine"),
    (lambda h, x: x / h, "nonlinear"),
    (lambda h, x: jax.lax.stop_gradient(h) + h, "nonlinear"),  # JVP is not the derivative
    (lambda h, x: jax.lax.scan(lambda c, xi: (c * xi + 1.0, None), h, jnp.stack([x, x]))[0], "affine"),
    # the carry becomes nonlinear only on the second iteration: needs the fixpoint
    (lambda h, x: jax.lax.scan(lambda c, xi: ((c[1] * c[1], h * xi), None), (x, x), jnp.stack([x, x]))[0][0], "nonlinear"),
    (lambda h, x: jax.lax.fori_loop(0, 3, lambda i, c: 0.5 * c + x, h), "affine"),
    (lambda h, x: jax.lax.while_loop(lambda c: c[0] < 10.0, lambda c: c * 2.0, h), "piecewise-linear"),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_degree(i):
    cell, expected = CASES[i]
    _, facts = analyse_cell(cell, jnp.zeros(4, F64), jnp.ones((3, 4), F64))
    assert facts.degree == expected
    assert facts.linear == (expected in ("constant", "affine"))
