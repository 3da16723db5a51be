"""What every solver receives and returns, and the solver registry.

A solver computes the trajectory v_1..v_T of ``v_t = f(v_{t-1}, xt_t)`` for a
``Problem``; it never differentiates through its own iterations — gradients come
from the implicit adjoint (``autopar.adjoint``), shared by all solvers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from autopar.registry import Registry
from autopar.structure import Structure

from . import pricing
from .pricing import Prediction
from .result import Result

__all__ = ["Problem", "Stats", "Solver", "NewtonSolver", "Prediction", "register_solver", "get_solver", "solver_names",
           "solver_options", "SOLVER_NAMES"]

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
    """A solver, as the planner and the emitter see it. The planner loops over the registry and
    reads only these members; it never names a solver.

    * ``applies(facts, rec) -> (ok, reason)``: whether it solves this recurrence exactly (or to
      tolerance), and why (not). ``parallel`` solvers are also declined when the recurrence has
      no parallel form (``autopar.plan.parallel_blockers``).
    * ``cost(facts, rec, K) -> Prediction``: predicted time, memory, iterations, work and depth
      with the backend constants ``K`` (build it from ``autopar.solvers.pricing``).
    * ``exact``: the result is the recurrence's solution without a tolerance (JAX may then
      differentiate the solver itself: ``backward="autodiff"``).
    * ``chain()``: the solvers it falls back to, itself first (``Info.solver`` indexes it).
    * ``options``: the ``parallelize`` options it reads (accepted for any registered solver).
    * ``description``: what it does, one line for ``explain()``'s candidate table.
    * ``solve(problem) -> (trajectory, Stats)``: never differentiated by JAX unless ``exact``.
    """

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True
    exact: ClassVar[bool] = False
    options: ClassVar[frozenset] = frozenset()
    description: ClassVar[str] = ""

    def applies(self, facts: Any, rec: Any) -> tuple[bool, str]:
        """(usable, reason) for this recurrence."""
        raise NotImplementedError

    def cost(self, facts: Any, rec: Any, K: Any) -> Prediction:
        """The planner's prediction for this solver. The default reads the older hook
        ``predict_cost(facts, rec, K) -> (seconds, bytes, iterations)`` (work and depth unknown)."""
        legacy = getattr(self, "predict_cost", None)
        if callable(legacy):
            t, m, it = legacy(facts, rec, K)
            return Prediction(float(t), float(m), float(it), math.nan, math.nan)
        raise NotImplementedError(_NO_COST.format(name=self.name))

    def describe(self, facts: Any) -> str:
        """The candidate table's line for this solver when it applies ("" shows its applies reason)."""
        return self.description

    def chain(self) -> tuple[str, ...]:
        """Names of the solvers this one may fall back to, itself first."""
        return (self.name,)

    def solve(self, problem: Problem) -> tuple[jax.Array, Stats]:
        raise NotImplementedError


_NO_COST = ("solver {name!r} defines no cost(facts, rec, K): the planner cannot price it. Define cost() "
            "returning autopar.solvers.Prediction (see 'Adding a solver' in docs/solvers.md), or subclass "
            "autopar.solvers.NewtonSolver to be priced as a Newton-family solver.")


class NewtonSolver(Solver):
    """The Newton family (deer, quasi-deer, elk, quasi-elk, and user solvers that subclass it):
    iterations on the whole trajectory, each an extraction of J, ``scans`` structured scans and a
    residual (``pricing.newton``). ``quasi`` solvers read and scan diag(J) only."""

    quasi: ClassVar[bool] = False
    scans: ClassVar[float] = 1.0  # structured scans per iteration
    copies: ClassVar[float] = 1.0  # sets of scan factors alive at once
    iteration_factor: ClassVar[float] = 1.0  # × the family's predicted iterations
    options = frozenset({"init", "picard_warmup", "fallback", "unroll"})  # unroll: the lax.scan fallback

    def applies(self, facts, rec):
        dt = jnp.dtype(rec.layout.vec_dtype)
        if not jnp.issubdtype(dt, jnp.inexact):
            return False, f"the state dtype {dt} is not floating point"
        return True, "Newton on the whole trajectory; converges for any real (or holomorphic complex) cell"

    def predict_iterations(self, facts: Any, rec: Any) -> float:
        """Iterations the planner should expect."""
        return self.iteration_factor * pricing.newton_iterations(facts, self.quasi)

    def cost(self, facts, rec, K):
        iters = float(self.predict_iterations(facts, rec))
        return pricing.newton(facts, rec, K, iters, quasi=self.quasi, scans=self.scans, copies=self.copies)


_SOLVERS = Registry("solver")


def register_solver(solver: Solver | type, *, override: bool = False):
    """Add ``solver`` (an instance, or a class to instantiate) to the registry the planner loops
    over; usable as a class decorator. It must say how it is priced: a ``cost()`` of its own
    (or the older ``predict_cost``), or the Newton model by subclassing ``NewtonSolver``."""
    inst = solver() if isinstance(solver, type) else solver
    if not inst.name:
        raise ValueError(f"{type(inst).__name__} has no `name`: set the class attribute name = '...'.")
    if type(inst).cost is Solver.cost and not callable(getattr(inst, "predict_cost", None)):
        raise TypeError(_NO_COST.format(name=inst.name))
    _SOLVERS.add(inst.name, inst, override=override)
    return solver


def solver_names() -> list[str]:
    return list(_SOLVERS)


def solver_options() -> frozenset:
    """Every option some registered solver reads."""
    return frozenset().union(*(s.options for s in _SOLVERS.values()))


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

