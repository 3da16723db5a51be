"""How a solve ended: ``autopar.Result``, the code in ``Stats.result`` and ``Info.result``."""

from __future__ import annotations

import enum

__all__ = ["Result"]


class Result(enum.IntEnum):
    """How a solve ended. ``Info.result`` holds the code as an int32 array (traced under jit,
    one per sequence under vmap); compare it with the members, ``info.result == Result.converged``,
    or read ``info.outcome`` for the member once it is concrete.

    * ``converged`` — the planned solver produced the result: an iterative stage met its
      per-element tolerance (``autopar.solvers.convergence``), or the solver is exact.
    * ``max_iterations`` — the stage ran ``max_iters`` iterations without meeting the tolerance
      (only seen with ``fallback=False``: the result is the best iterate).
    * ``diverged`` — the iterates stopped approaching the solution: the residual grew past
      ``DIVERGENCE_FACTOR`` × max(initial residual, 1) (deer, quasi-deer), or no damped step
      lowered the merit before λ passed its cap (elk, quasi-elk).
    * ``nonfinite`` — NaN or inf: in an iterate (then the stage stopped at once), or in the
      returned trajectory (NaN inputs, a cell that overflows — for every solver, sequential too).
    * ``stalled`` — a quasi stage's residual stopped improving (for ``STALL_ITERS`` steps within
      ``STALL_LEVEL`` × tol, or ``STALL_ITERS_FAR`` at any level) and the proven-structure
      measure did not confirm convergence
      (``autopar.solvers.newton``; only seen with ``fallback=False``).
    * ``fell_back`` — the planned solver did not converge and a later stage of its fallback
      chain (``Info.chain``) produced the result, which is converged (``Info.solver`` names it).

    ``converged`` and ``fell_back`` are the outcomes with ``Info.converged`` True.
    """

    converged = 0
    max_iterations = 1
    diverged = 2
    nonfinite = 3
    fell_back = 4
    stalled = 5

    def __str__(self) -> str:
        return self.name
