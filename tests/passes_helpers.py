"""Shared helpers of the passes tests: numerical Jacobians of a traced cell."""

import jax
import jax.numpy as jnp
import numpy as np

from autopar.passes import analyse
from autopar.passes.check import primal_step, random_step_inputs
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
        return jax.jacfwd(primal_step(rec, consts, disc, xl))(v)

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
    f = jax.jit(primal_step(rec, consts, disc, xl))
    J0 = np.asarray(jax.jacfwd(f)(jnp.zeros(rec.size, rec.layout.vec_dtype)))
    f0 = np.asarray(f(jnp.zeros(rec.size, rec.layout.vec_dtype)))
    for _ in range(n_points):
        v = jnp.asarray(rng.normal(size=rec.size), rec.layout.vec_dtype)
        np.testing.assert_allclose(np.asarray(jax.jacfwd(f)(v)), J0, atol=1e-9, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(f(v)), f0 + J0 @ np.asarray(v), atol=1e-8, rtol=1e-8)


# ---- soundness at chosen points (custom_vjp cells differentiate as their primal) -----------
def step_points(rec, seed=0, kinds=("random", "saturated", "zero", "large")):
    """Points (v, disc, xl) of ``rec.step``: random normal, saturated (scale 30: tanh / sigmoid
    flat), all zeros (relu kinks, x·0) and large (1e6)."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in kinds:
        scale = {"random": 1.0, "saturated": 30.0, "zero": 0.0, "large": 1e6}[kind]
        v, disc, xl = random_inputs(rec, rng, scale)
        out.append((kind, v, disc, xl))
    return out


def assert_sparsity_covers(rec, facts, seed=0, kinds=("random", "saturated", "zero", "large")):
    """The reported sparsity and structure pattern contain every nonzero of jax.jacfwd at
    random, saturated, zero and large points."""
    S = np.asarray(facts["sparsity"], bool)
    P = np.asarray(facts["structure"].pattern(), bool)
    consts = rec.consts
    for kind, v, disc, xl in step_points(rec, seed, kinds):
        J = np.asarray(jax.jacfwd(primal_step(rec, consts, disc, xl))(v))
        nz = np.abs(J) > 0  # NaN (inf·0 at large points) is not evidence of a dependency
        bad = nz & ~S
        assert not bad.any(), (f"{kind} point: sparsity misses entries {np.argwhere(bad)[:8].tolist()}\n"
                               f"J=\n{J}\nS=\n{S.astype(int)}")
        bad = nz & ~P
        assert not bad.any(), f"{kind} point: {facts['structure'].kind} pattern misses {np.argwhere(bad)[:8].tolist()}"


def assert_affine_combination(rec, seed=0, n_points=3, rtol=1e-9):
    """f(a·h1 + (1−a)·h2) == a·f(h1) + (1−a)·f(h2) for fixed x at random h1, h2, a (what an
    affine claim promises; also far outside the unit ball)."""
    rng = np.random.default_rng(seed)
    consts = rec.consts
    for k in range(n_points):
        scale = (1.0, 30.0, 1e3)[k % 3]
        h1, disc, xl = random_inputs(rec, rng, scale)
        h2, _, _ = random_inputs(rec, rng, scale)
        a = float(rng.uniform(-1.5, 2.5))
        f = jax.jit(primal_step(rec, consts, disc, xl))
        lhs = np.asarray(f(a * h1 + (1 - a) * h2))
        rhs = a * np.asarray(f(h1)) + (1 - a) * np.asarray(f(h2))
        tol = rtol if np.finfo(np.dtype(rec.layout.vec_dtype)).bits >= 64 else 1e-4
        np.testing.assert_allclose(lhs, rhs, rtol=tol, atol=tol * (1 + np.abs(rhs).max()))
