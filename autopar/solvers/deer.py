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

Each is an ``Iteration`` (``newton_iteration``) run by the Newton driver
(``autopar.solvers.newton``), which stops on the scale-relative residual
(``convergence``), on non-finite or growing residuals, and falls back along
``chain()``: deer → elk → sequential, quasi-deer → quasi-elk → sequential.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autopar.structure import Diagonal

from . import convergence as cv
from . import newton
from .base import NewtonSolver, Problem, register_solver
from .linear import linearize_steps, newton_update, proven_verifier

__all__ = ["Deer", "QuasiDeer", "newton_iteration", "causal_newton_iteration", "causal_widths"]

#: Default iteration caps (the user's ``max_iters`` overrides).
DEER_MAX_ITERS = 64
QUASI_MAX_ITERS = 256


def newton_iteration(linearize, structure, v0) -> newton.Iteration:
    """Newton (DEER) as an ``Iteration`` for the driver: a step is ``newton_update`` (one linear
    scan) from the iterate's linearisation, then the linearisation at the new iterate, which gives
    its residual and the next step's J.

    ``linearize(prev) -> (f values, compact J)`` in ``structure``.
    """

    def init(V):
        prev = cv.shift(v0, V)
        fv, a = linearize(prev)
        return newton.State(V, cv.stage_residual(structure, a, prev, V, fv), (fv, a))

    def step(s):
        fv, a = s.aux
        return init(newton_update(structure, v0, cv.shift(v0, s.V), fv, a))

    return newton.Iteration(init, step)


def _per_step_residual(structure, a, prev, vs, fv):
    """``convergence.step_residuals`` with the stage's scale: (T,)."""
    return cv.step_residuals(vs, fv, cv.element_scale(structure, a, prev, vs))


def causal_widths(T: int, option) -> tuple[int, ...]:
    """The window widths after the full one: T/2, T/4, … down to ``causal`` (an int; True: max(T/16, 32))."""
    floor = max(T // 16, 32) if option is True else max(int(option), 1)
    out, w = [], T // 2
    while w >= floor:
        out.append(w)
        w //= 2
    return tuple(out)


def causal_newton_iteration(linearize, structure, v0, xt, T, tol, widths) -> newton.Iteration:
    """DEER with the causal window: once the first unconverged step is k, a step updates only
    the suffix [T − W, T) for the smallest static W ≥ T − k, from the frozen v_{T−W} before it.

    Exact as the full step is: a step's update reads only earlier steps, so the frozen prefix
    keeps its (converged) residuals, and the restarted window's first step is made exact.
    ``linearize(prev, xt) -> (f values, compact J)``; the state keeps per-step residuals."""
    tslice = lambda tree, start: jax.tree_util.tree_map(lambda y: y[start:], tree)  # noqa: E731

    def state(V, fv, a, rt):
        r = jnp.max(rt) if T > 0 else jnp.zeros((), jnp.float32)
        return newton.State(V, r, (fv, a, rt))

    def init(V):
        prev = cv.shift(v0, V)
        fv, a = linearize(prev, xt)
        return state(V, fv, a, _per_step_residual(structure, a, prev, V, fv))

    def step_from(start):
        def step(s):
            fv, a, rt = s.aux
            vin = v0 if start == 0 else s.V[start - 1]
            prev = cv.shift(vin, s.V[start:])
            new = newton_update(structure, vin, prev, fv[start:], tslice(a, start))
            prev = cv.shift(vin, new)
            fv_w, a_w = linearize(prev, tslice(xt, start))
            put = lambda full, w: full.at[start:].set(w)  # noqa: E731
            rt_w = _per_step_residual(structure, a_w, prev, new, fv_w)
            return state(put(s.V, new), put(fv, fv_w), jax.tree_util.tree_map(put, a, a_w), put(rt, rt_w))

        return step

    def active(s):
        bad = s.aux[2] > tol
        return jnp.where(jnp.any(bad), T - jnp.argmax(bad), 0)

    return newton.Iteration(init, step_from(0), phases=tuple((w, step_from(T - w)) for w in widths), active=active)


def _iteration(problem: Problem, structure, linearize, tol):
    """``newton_iteration``, or its causal-window form with the ``causal`` option; judged at a
    stall by the documented measure (``linear.proven_verifier``)."""
    causal = problem.options.get("causal")
    if causal:
        widths = causal_widths(problem.length, causal)
        it = causal_newton_iteration(linearize, structure, problem.v0, problem.xt, problem.length, tol, widths)
    else:
        it = newton_iteration(lambda prev: linearize(prev, problem.xt), structure, problem.v0)
    return it._replace(verify=proven_verifier(problem))


@register_solver
class Deer(NewtonSolver):
    """Newton (DEER) with J_t in the proven structure; falls back to elk, then sequential."""

    name = "deer"
    options = NewtonSolver.options | {"damping", "causal"}  # its chain runs elk

    def describe(self, facts):
        return f"Newton, J in its proven structure ({facts['structure'].kind})"

    def chain(self):
        return ("deer", "elk", "sequential")

    def stage(self, problem: Problem) -> newton.Stage:
        st = problem.structure
        tol = cv.options_tol(problem)

        def linearize(prev, xt):
            return linearize_steps(problem.f, st, prev, xt)

        return newton.newton_stage(self.name, _iteration(problem, st, linearize, tol), tol,
                                   cv.options_max_iters(problem, DEER_MAX_ITERS))

    def solve(self, problem: Problem):
        return newton.solve(self, problem)


@register_solver
class QuasiDeer(NewtonSolver):
    """quasi-DEER: Newton with diag(J_t) (elementwise scans); falls back to quasi-elk, then sequential."""

    name = "quasi-deer"
    quasi = True
    options = Deer.options
    description = "Newton with diag(J): cheaper steps, more of them"

    def chain(self):
        return ("quasi-deer", "quasi-elk", "sequential")

    def stage(self, problem: Problem) -> newton.Stage:
        from .quasi import diagonal_steps

        def linearize(prev, xt):
            return diagonal_steps(problem.f, problem.structure, prev, xt)

        tol = cv.options_tol(problem)
        it = _iteration(problem, Diagonal(problem.v0.shape[0]), linearize, tol)
        return newton.newton_stage(self.name, it, tol, cv.options_max_iters(problem, QUASI_MAX_ITERS))

    def solve(self, problem: Problem):
        return newton.solve(self, problem)

