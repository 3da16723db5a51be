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

from autopar.structure import Diagonal

from . import convergence as cv
from . import newton
from .base import NewtonSolver, Problem, register_solver
from .linear import linearize_steps, newton_update, proven_verifier

__all__ = ["Deer", "QuasiDeer", "newton_iteration"]

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


@register_solver
class Deer(NewtonSolver):
    """Newton (DEER) with J_t in the proven structure; falls back to elk, then sequential."""

    name = "deer"
    options = NewtonSolver.options | {"damping"}  # its chain runs elk

    def describe(self, facts):
        return f"Newton, J in its proven structure ({facts['structure'].kind})"

    def chain(self):
        return ("deer", "elk", "sequential")

    def stage(self, problem: Problem) -> newton.Stage:
        st = problem.structure

        def linearize(prev):
            return linearize_steps(problem.f, st, prev, problem.xt)

        it = newton_iteration(linearize, st, problem.v0)._replace(verify=proven_verifier(problem))
        return newton.newton_stage(self.name, it, cv.options_tol(problem), cv.options_max_iters(problem, DEER_MAX_ITERS))

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

        def linearize(prev):
            return diagonal_steps(problem.f, problem.structure, prev, problem.xt)

        it = newton_iteration(linearize, Diagonal(problem.v0.shape[0]), problem.v0)._replace(
            verify=proven_verifier(problem))
        return newton.newton_stage(self.name, it, cv.options_tol(problem), cv.options_max_iters(problem, QUASI_MAX_ITERS))

    def solve(self, problem: Problem):
        return newton.solve(self, problem)

