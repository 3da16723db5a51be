"""What every solver receives and returns, and the solver registry.

A solver computes the trajectory v_1..v_T of ``v_t = f(v_{t-1}, xt_t)`` for a
``Problem``; it never differentiates through its own iterations — gradients come
from ``autopar.emit``'s implicit adjoint, shared by all solvers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from autopar.structure import Structure

from .result import Result

__all__ = ["Problem", "Stats", "Solver", "register_solver", "get_solver", "solver_names", "SOLVER_NAMES"]

#: Public solver names, in the order the docs list them.
SOLVER_NAMES = ("auto", "sequential", "linear", "deer", "quasi-deer", "elk", "quasi-elk")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One recurrence instance: ``v_t = f(v_{t-1}, xt_t)`` for t = 1..T from ``v0``.

    ``xt`` is a pytree whose leaves carry a leading time axis T; ``structure`` is the
    proven structure of J_t = ∂f/∂v; ``options`` the user's solver options.
    """

    f: Callable[[jax.Array, Any], jax.Array]
    v0: jax.Array
    xt: Any
    structure: Structure
    length: int
    options: dict = dataclasses.field(default_factory=dict)
    #: Optional (split, join): the flat vector <-> state leaves in their own shapes. A solver that
    #: loops step by step carries the leaves, so XLA sees the cell's own shapes in the loop body.
    leaves: Any = None

    @property
    def dtype(self):
        return self.v0.dtype


@dataclasses.dataclass(frozen=True)
class Stats:
    """What a solver reports: arrays (traceable) for iterations, convergence, residual history."""

    iterations: Any
    converged: Any
    solver_index: Any = 0  # index into the solver's fallback chain actually used
    history: Any = None  # per-iteration residuals, padded with NaN
    result: Any = Result.converged  # int32 ``Result`` code: how the solve ended


class Solver:
    """A solver: a name, when it applies, and how to solve."""

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True

    def applies(self, facts: Any, rec: Any) -> tuple[bool, str]:
        """(usable, reason) for this recurrence."""
        raise NotImplementedError

    def predict_iterations(self, facts: Any, rec: Any) -> float:
        """Iterations the planner should expect (1 for direct solvers)."""
        return 1.0

    def chain(self) -> tuple[str, ...]:
        """Names of the solvers this one may fall back to, itself first."""
        return (self.name,)

    def solve(self, problem: Problem) -> tuple[jax.Array, Stats]:
        raise NotImplementedError


_SOLVERS: dict[str, Solver] = {}


def register_solver(solver: Solver | type, *, override: bool = False):
    inst = solver() if isinstance(solver, type) else solver
    if inst.name in _SOLVERS and not override:
        raise ValueError(f"a solver named {inst.name!r} is already registered; pass override=True to replace it.")
    _SOLVERS[inst.name] = inst
    return solver


def solver_names() -> list[str]:
    return list(_SOLVERS)


def get_solver(name: str) -> Solver:
    if name not in _SOLVERS:
        pending = [n for n in SOLVER_NAMES if n not in _SOLVERS and n != "auto"]
        extra = f" ({', '.join(pending)} not available in this version)" if name in pending else ""
        raise ValueError(
            f"unknown solver {name!r}{extra}. Available: {', '.join(['auto', *_SOLVERS])}."
        )
    return _SOLVERS[name]


def converged_stats(iterations: int = 1) -> Stats:
    return Stats(jnp.asarray(iterations, jnp.int32), jnp.asarray(True))
