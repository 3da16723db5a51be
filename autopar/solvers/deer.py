r"""DEER and quasi-DEER: Newton's method on the whole trajectory (Lim et al. 2024;
Gonzalez et al. 2024).

Write the trajectory as one unknown V = (v_1..v_T) and the residual
r_t(V) = v_t − f(v_{t−1}, x_t), with v_0 given. Linearising f at the current
iterate V⁽ⁱ⁾ (J_t = ∂f/∂v at (v⁽ⁱ⁾_{t−1}, x_t)) and solving r + (∂r/∂V)ΔV = 0 gives

    v_t⁽ⁱ⁺¹⁾ = J_t v_{t−1}⁽ⁱ⁺¹⁾ + (f(v_{t−1}⁽ⁱ⁾, x_t) − J_t v_{t−1}⁽ⁱ⁾),

a *linear* recurrence, solved by ``linear_scan`` (one associative scan, O(log T)
depth) with J_t in the **proven** structure: a diagonal cell gets exact Newton at
diagonal cost, a (c, h) cell with 2×2 blocks exact Newton with block scans, a
dense cell dense scans — ParaRNN's hand-written specialisation, found here from
the jaxpr. ∂r/∂V is block lower-bidiagonal with identity diagonal, so the step is
always defined; in exact arithmetic step t is exact after at most t iterations,
so DEER terminates in ≤ T iterations, and converges quadratically near the
solution.

**quasi-DEER** replaces J_t by diag(J_t): each iteration is an elementwise scan,
O(T·D) work and memory whatever the structure, at the price of linear instead of
quadratic convergence. The fixed point is the same (the residual is exact; only
the step is approximate). The diagonal never comes from a dense Jacobian: see
``autopar.solvers.quasi.diagonal_steps``.

Both stop on the scale-relative residual (``convergence``), detect non-finite or
growing residuals, and fall back along ``chain()``: deer → elk → sequential,
quasi-deer → quasi-elk → sequential.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autopar.structure import Diagonal

from . import convergence as cv
from .base import NewtonSolver, Problem, empty_stats, register_solver
from .linear import linearize_steps, newton_update

__all__ = ["Deer", "QuasiDeer", "newton_stage"]

#: Default iteration caps (the user's ``max_iters`` overrides).
DEER_MAX_ITERS = 64
QUASI_MAX_ITERS = 256


def newton_stage(linearize, structure, tol: float, max_iters: int):
    """A chain stage running Newton iterations ``V ← newton_update(...)``.

    ``linearize(prev) -> (f values, compact J)`` in ``structure``.
    """

    def stage(problem: Problem, V, history, count):
        v0 = problem.v0
        prev = cv.shift(v0, V)
        fv, a = linearize(prev)
        r = cv.stage_residual(structure, a, prev, V, fv)
        history = history.at[count].set(r)
        limit = cv.DIVERGENCE_FACTOR * jnp.maximum(r, 1.0)

        def cond(c):
            i, _, _, _, r, _, best_r, _, _, bad = c
            return (i < max_iters) & (best_r > tol) & ~bad

        def body(c):
            i, V, fv, a, r, best_V, best_r, hist, cnt, bad = c
            Vn = newton_update(structure, v0, cv.shift(v0, V), fv, a)
            prevn = cv.shift(v0, Vn)
            fvn, an = linearize(prevn)
            rn = cv.stage_residual(structure, an, prevn, Vn, fvn)
            ok = jnp.isfinite(rn) & cv.finite(Vn)
            better = rn < best_r
            best_V = jnp.where(better, Vn, best_V)
            best_r = jnp.where(better, rn, best_r)
            hist = hist.at[cnt + 1].set(rn)
            bad = ~ok | (rn > limit)
            return (i + 1, Vn, fvn, an, rn, best_V, best_r, hist, cnt + 1, bad)

        init = (jnp.asarray(0, jnp.int32), V, fv, a, r, V, r, history, count, ~jnp.isfinite(r))
        i, _, _, _, _, best_V, best_r, hist, cnt, _ = jax.lax.while_loop(cond, body, init)
        return cv.StageResult(best_V, best_r <= tol, i, hist, cnt + 1)

    return stage


@register_solver
class Deer(NewtonSolver):
    """Newton (DEER) with J_t in the proven structure; falls back to elk, then sequential."""

    name = "deer"
    options = NewtonSolver.options | {"damping"}  # its chain runs elk

    def describe(self, facts):
        return f"Newton, J in its proven structure ({facts['structure'].kind})"

    def chain(self):
        return ("deer", "elk", "sequential")

    def stages(self, problem: Problem):
        st = problem.structure
        tol = cv.options_tol(problem)
        m = cv.options_max_iters(problem, DEER_MAX_ITERS)

        def linearize(prev):
            return linearize_steps(problem.f, st, prev, problem.xt)

        from .elk import ELK_MAX_ITERS, elk_stage

        m2 = cv.options_max_iters(problem, ELK_MAX_ITERS)
        return [newton_stage(linearize, st, tol, m), elk_stage(problem, quasi=False), cv.sequential_stage], [m, m2]

    def solve(self, problem: Problem):
        return _solve(self, problem)


@register_solver
class QuasiDeer(NewtonSolver):
    """quasi-DEER: Newton with diag(J_t) (elementwise scans); falls back to quasi-elk, then sequential."""

    name = "quasi-deer"
    quasi = True
    options = Deer.options
    description = "Newton with diag(J): cheaper steps, more of them"

    def chain(self):
        return ("quasi-deer", "quasi-elk", "sequential")

    def stages(self, problem: Problem):
        from .elk import ELK_MAX_ITERS, elk_stage
        from .quasi import diagonal_steps

        D = problem.v0.shape[0]
        tol = cv.options_tol(problem)
        m = cv.options_max_iters(problem, QUASI_MAX_ITERS)

        def linearize(prev):
            return diagonal_steps(problem.f, problem.structure, prev, problem.xt)

        m2 = cv.options_max_iters(problem, ELK_MAX_ITERS)
        return [newton_stage(linearize, Diagonal(D), tol, m), elk_stage(problem, quasi=True), cv.sequential_stage], [m, m2]

    def solve(self, problem: Problem):
        return _solve(self, problem)


def _solve(solver, problem: Problem):
    if problem.length == 0:
        return jnp.zeros((0, problem.v0.shape[0]), problem.dtype), empty_stats()
    stages, iters = solver.stages(problem)
    return cv.run_chain(problem, stages, cv.history_length(problem, iters))
