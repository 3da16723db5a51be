"""Shared helpers of the passes tests: numerical Jacobians of a traced cell."""

import jax
import jax.numpy as jnp
import numpy as np

from autopar.passes import analyse
from autopar.passes.check import random_step_inputs
from autopar.trace import trace_cell


def analyse_cell(cell, h0, xs):
    rec = trace_cell(cell, h0, xs)
    return rec, analyse(rec)


def random_inputs(rec, rng, scale=1.0):
    return random_step_inputs(rec, rng, scale)


def jacobians(rec, n_points=3, seed=0, scale=1.0):
    """J = ∂v_new/∂v of ``rec`` at ``n_points`` random (v, x), as numpy arrays."""
    rng = np.random.default_rng(seed)
    consts = rec.consts

    @jax.jit
    def jac(v, disc, xl):
        return jax.jacfwd(lambda u: rec.step(consts, u, disc, xl)[0])(v)

    out = []
    for _ in range(n_points):
        v, disc, xl = random_inputs(rec, rng, scale)
        out.append(np.asarray(jac(v, disc, xl)))
    return out


def jacobian_violations(facts, J):
    """[(check, message)] where the numerical Jacobian ``J`` contradicts the reported sparsity or
    structure (non-finite entries are ignored: they say nothing about the pattern)."""
    out = []
    J = np.where(np.isfinite(J), J, 0)
    S = np.asarray(facts["sparsity"], bool)
    P = np.asarray(facts["structure"].pattern(), bool)
    kind = facts["structure"].kind
    nz = np.abs(J) > 0
    bad = nz & ~S
    if bad.any():
        out.append(("sparsity", f"sparsity misses entries {np.argwhere(bad)[:8].tolist()}\nJ=\n{J}\nS=\n{S.astype(int)}"))
    bad = nz & ~P
    if bad.any():
        out.append(("structure", f"{kind} pattern misses entries {np.argwhere(bad)[:8].tolist()}"))
    n = J.shape[0]
    if kind == "identity" and not np.allclose(J, np.eye(n), rtol=0, atol=1e-12):
        out.append(("structure", f"identity claimed, J=\n{J}"))
    if kind == "scalar" and not np.allclose(J, J[0, 0] * np.eye(n), rtol=0, atol=1e-9 * max(1, abs(J[0, 0]))):
        out.append(("structure", f"scalar claimed, J=\n{J}"))
    if kind == "zero" and nz.any():
        out.append(("structure", f"zero claimed, J=\n{J}"))
    return out


def assert_sound(rec, facts, n_points=3, seed=0):
    """Every nonzero of the numerical J lies in the reported sparsity and structure pattern."""
    for J in jacobians(rec, n_points, seed):
        bad = jacobian_violations(facts, J)
        assert not bad, "\n".join(m for _, m in bad)


def assert_affine(rec, seed=0, n_points=2):
    """For fixed x: J is the same at several v and f(v) = f(0) + J v."""
    rng = np.random.default_rng(seed)
    consts = rec.consts
    _, disc, xl = random_inputs(rec, rng)
    f = jax.jit(lambda u: rec.step(consts, u, disc, xl)[0])
    J0 = np.asarray(jax.jacfwd(f)(jnp.zeros(rec.size, rec.layout.vec_dtype)))
    f0 = np.asarray(f(jnp.zeros(rec.size, rec.layout.vec_dtype)))
    for _ in range(n_points):
        v = jnp.asarray(rng.normal(size=rec.size), rec.layout.vec_dtype)
        np.testing.assert_allclose(np.asarray(jax.jacfwd(f)(v)), J0, atol=1e-9, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(f(v)), f0 + J0 @ np.asarray(v), atol=1e-8, rtol=1e-8)
