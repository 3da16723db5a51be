r"""The linear solver: exact, one associative scan, for affine cells.

For an affine cell ``f(v, x_t) = A_t v + b_t`` we read ``b_t = f(0, x_t)`` and the
compact form of ``A_t`` (in the proven structure) off Jacobian-vector products at
v = 0 — exact because f is affine in v. Then

    (A₂, b₂) ∘ (A₁, b₁) = (A₂A₁, A₂b₁ + b₂)

is associative, and after folding v₀ into the first element,
``lax.associative_scan`` yields every v_t in O(log T) depth. The same
``linear_scan`` serves each Newton iteration and the adjoint (transposed factors,
reversed time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autopar.structure import Structure

from . import convergence as cv
from . import pricing
from .base import Problem, Solver, converged_stats, register_solver

__all__ = ["linearize_steps", "linear_scan", "newton_update", "proven_residual", "proven_verifier", "Linear"]

#: ``proven_residual`` linearises at most this many floats of compact J at once (time chunks).
RESIDUAL_CHUNK_FLOATS = 1 << 24


def linearize_steps(f, structure: Structure, points, xt):
    """For each t: (f(points_t, xt_t), compact J_t) with J_t = ∂f/∂v at points_t.

    ``points`` is (T, D). Uses ``structure.extract`` so only as many JVPs are taken
    as the structure needs (one for diagonal, b for blocks of size b, D for dense).
    """

    def one(p, x):
        val, jvp = jax.linearize(lambda v: f(v, x), p)
        return val, structure.extract(jvp, p.dtype)

    return jax.vmap(one)(points, xt)


def proven_residual(f, structure: Structure, prev, xt, vs, max_floats: int = RESIDUAL_CHUNK_FLOATS):
    """res(V) (``convergence.residual``) with the scale of J_t in ``structure`` and the input's
    inflow (``convergence.input_inflow``), linearised at ``prev`` in time chunks of at most ``max_floats`` floats of J (so a dense J of a long
    sequence is never held whole). The documented meaning of ``converged`` and of
    ``Info.residual``; also the final judge of a stage whose own scale is stricter (quasi)."""
    T = vs.shape[0]
    chunk = max(1, int(max_floats) // max(1, int(structure.floats())))

    def one(args):
        p, x, v = args
        fv, a = linearize_steps(f, structure, p, x)
        return cv.stage_residual(structure, a, p, v, fv, cv.input_inflow(f, p, x))

    if T <= chunk:
        return one((prev, xt, vs))
    n = T // chunk
    head = jax.tree_util.tree_map(lambda a: a[: n * chunk].reshape((n, chunk) + a.shape[1:]), (prev, xt, vs))
    r = jnp.max(jax.lax.map(one, head))
    if n * chunk < T:
        r = jnp.maximum(r, one(jax.tree_util.tree_map(lambda a: a[n * chunk:], (prev, xt, vs))))
    return r


def proven_verifier(problem: Problem):
    """``newton.Iteration.verify``: res(V) by the documented measure (``proven_residual``), in
    chunks of at most T·D floats of J — a quasi method's O(T·D) memory holds."""
    budget = min(RESIDUAL_CHUNK_FLOATS, problem.length * problem.v0.shape[0])
    return lambda V: proven_residual(problem.f, problem.structure, cv.shift(problem.v0, V), problem.xt, V, budget)


def linear_scan(structure: Structure, a, b, v0, *, reverse: bool = False):
    """Solve v_t = A_t v_{t-1} + b_t for t = 1..T (A in compact form, leading axis T).

    With ``reverse=True`` solves v_t = A_t v_{t+1} + b_t for t = T..1 with v_{T+1} = v0.
    """
    if b.shape[0] == 0:
        return b
    if reverse:
        a = jax.tree_util.tree_map(lambda x: jnp.flip(x, 0), a)
        out = linear_scan(structure, a, jnp.flip(b, 0), v0)
        return jnp.flip(out, 0)
    return structure.scan(a, b, v0)  # the kind's own: associative by default, closed forms for 0 / I


def newton_update(structure: Structure, v0, prev, fv, a):
    """One Newton (DEER) step at the iterate whose shifted states are ``prev``: solve
    v_t = J_t v_{t−1} + (f(prev_t) − J_t prev_t) by one linear scan (``fv`` = f(prev_t), ``a`` = J_t)."""
    b = fv - jax.vmap(structure.matvec, axis_size=prev.shape[0])(a, prev)
    return linear_scan(structure, a, b, v0)


@register_solver
class Linear(Solver):
    name = "linear"
    exact = True

    def applies(self, facts, rec):
        if not facts.get("linear", False):
            return False, f"the cell is {facts.get('degree', 'not proven affine')} in h, not affine"
        return True, "the cell is affine in h: exact in one scan"

    def cost(self, facts, rec, K):
        """One extraction and one scan in the proven structure; depth levels(T)."""
        T, D, isz, cplx, xb, _ = pricing.sizes(rec)
        st = facts["structure"]
        t_ex, w_ex = pricing.extraction(T, D, pricing.flops(facts, cplx), st, isz, xb, K,
                                        pricing.tangent(facts, rec, cplx), pricing.rows(facts, rec, st.n_jvps))
        t_sc, w_sc = pricing.scan(T, D, st, isz, cplx, K)
        mem = 3.0 * T * (st.floats() + D) * isz
        return pricing.Prediction(K.parallel_overhead + t_ex + t_sc, mem, 1.0, w_ex + w_sc, float(pricing.levels(T)))

    def solve(self, problem: Problem):
        T, D = problem.length, problem.v0.shape[0]
        zeros = jnp.zeros((T, D), problem.dtype)
        b, a = linearize_steps(problem.f, problem.structure, zeros, problem.xt)
        return linear_scan(problem.structure, a, b, problem.v0), converged_stats(1)
