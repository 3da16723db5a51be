"""Stage 3: choose a solver. The plan is data; the emitter is the only stage that builds programs.

For each candidate solver the planner checks whether it applies to the proven
facts, predicts its time and memory on the current backend with the cost model
in ``costs``, and picks the cheapest one that applies (or the one the user forced,
after checking it applies). Every candidate's row — prediction and reason — is
kept in ``Plan.candidates`` so ``explain()`` shows the table the choice came from.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from . import costs
from .solvers import SOLVER_NAMES, get_solver, solver_names

__all__ = ["Candidate", "Plan", "make_plan"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One row of the planner's table."""

    solver: str
    applies: bool
    time: float  # predicted seconds (nan when it does not apply)
    memory: float  # predicted peak bytes
    iterations: float  # predicted iterations (1 for direct solvers)
    reason: str
    chosen: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the emitter builds: forward solver, backward (adjoint) mode, structure, options."""

    solver: str
    backward: str  # "linear" (structure-aware reverse scan), "sequential" (reverse lax.scan of VJPs) or
    # "autodiff" (no implicit adjoint: JAX differentiates the exact forward solver)
    structure: Any
    candidates: tuple[Candidate, ...]
    reason: str
    backend: str
    options: dict = dataclasses.field(default_factory=dict)
    forced: bool = False
    #: How integer state leaves are solved: "affine-scan" (exact associative scan) or "sequential".
    discrete: str = "sequential"


def parallel_blockers(facts: Any, rec: Any) -> list[str]:
    """Why no parallel solver can run on this recurrence (empty when one can)."""
    out = []
    if rec.layout.mixed_complex:
        out.append("the state mixes real and complex leaves (parallel solvers need one field)")
    if not facts.get("holomorphic", True):
        prims = ", ".join(facts.get("non_holomorphic_primitives", []))
        out.append(f"the complex state update is not complex-differentiable in h (uses {prims})")
    if rec.discrete_depends_on_float:
        out.append("an integer/bool state leaf depends on the float state")
    if rec.size == 0:
        out.append("there is no float state to solve for")
    return out


def _predict(name: str, facts, rec, K: costs.BackendConstants) -> tuple[float, float, float]:
    """(seconds, bytes, iterations) predicted for ``name``."""
    T, D = max(rec.length, 1), rec.size
    st = facts["structure"]
    itemsize = np.dtype(rec.layout.vec_dtype).itemsize
    fl = facts.get("step_flops", 1.0)
    if name == "sequential":
        return T * (K.step_overhead + fl / K.seq_flops), T * D * itemsize, 1.0
    levels = 2 * math.ceil(math.log2(T)) if T > 1 else 1
    extract = T * fl * (1 + st.n_jvps) / K.par_flops
    scan_work = 2.0 * T * (st.compose_flops() + st.matvec_flops() + D)
    scan = scan_work / K.par_flops + levels * K.level_overhead
    mem = 3.0 * T * (st.floats() + D) * itemsize
    if name == "linear":
        return extract + scan, mem, 1.0
    iters = float(get_solver(name).predict_iterations(facts, rec))
    return iters * (extract + scan), mem, iters


def make_plan(rec: Any, facts: Any, solver: str = "auto", backend: str | None = None, options: dict | None = None) -> Plan:
    options = dict(options or {})
    backend = backend or jax.default_backend()
    K = costs.constants_for(backend)
    if solver not in SOLVER_NAMES and solver not in solver_names():
        get_solver(solver)  # raises with the list of available solvers
    blockers = parallel_blockers(facts, rec)
    rows = []
    for name in solver_names():
        s = get_solver(name)
        ok, why = s.applies(facts, rec)
        if ok and s.parallel and blockers:
            ok, why = False, "; ".join(blockers)
        t, m, it = _predict(name, facts, rec, K) if ok else (math.nan, math.nan, math.nan)
        rows.append(Candidate(name, ok, t, m, it, why))

    budget = options.get("memory_budget")
    if solver != "auto":
        s = get_solver(solver)
        row = next(r for r in rows if r.solver == solver)
        if not row.applies:
            raise ValueError(
                f"solver={solver!r} does not apply to this cell: {row.reason}. "
                "Use solver='auto' to let autopar choose, or solver='sequential'."
            )
        chosen, reason, forced = solver, f"forced by solver={solver!r}", True
    else:
        usable = [r for r in rows if r.applies and (budget is None or not (r.memory > budget))]
        best = min(usable, key=lambda r: r.time)
        chosen, forced = best.solver, False
        others = sorted((r for r in usable if r.solver != best.solver), key=lambda r: r.time)
        if others:
            reason = f"{best.solver} is predicted fastest on {backend} ({best.time:.3g}s vs {others[0].solver} {others[0].time:.3g}s)"
        else:
            reason = f"{best.solver} is the only solver that applies"
    rows = tuple(dataclasses.replace(r, chosen=(r.solver == chosen)) for r in rows)

    backward = _backward_mode(options.get("backward", "auto"), chosen, rec, facts, K, blockers)
    discrete = "affine-scan" if facts.get("discrete_affine") else "sequential"
    return Plan(chosen, backward, facts["structure"], rows, reason, backend, options, forced, discrete)


BACKWARD_MODES = ("auto", "linear", "sequential", "autodiff")
_EXACT_SOLVERS = ("sequential", "linear")


def _backward_mode(backward, solver, rec, facts, K, blockers) -> str:
    """Validate the user's ``backward=`` option and resolve ``"auto"``.

    ``linear``/``sequential`` name how the implicit adjoint is solved; ``autodiff`` turns the
    implicit adjoint off and lets JAX differentiate the forward solver itself (exact solvers only:
    it supports forward mode and ``jax.hessian``, at lax.scan's memory cost).
    """
    if backward not in BACKWARD_MODES:
        raise ValueError(f"`backward` must be one of {BACKWARD_MODES}; got {backward!r}.")
    if backward == "autodiff" and solver not in _EXACT_SOLVERS:
        raise ValueError(
            f"backward='autodiff' differentiates through the forward solver, which is only exact for "
            f"{_EXACT_SOLVERS}; the planned solver is {solver!r}. Pass solver='sequential' (or 'linear' for an "
            "affine cell) with backward='autodiff', or keep backward='auto' for the implicit adjoint."
        )
    if rec.discrete_depends_on_float or rec.size == 0:
        # The adjoint needs the float recurrence on its own; JAX differentiates lax.scan directly.
        return "autodiff" if solver == "sequential" else backward
    if backward == "linear" and blockers:
        raise ValueError(
            "backward='linear' needs the adjoint recurrence in a parallel form, but "
            + "; ".join(blockers) + ". Use backward='sequential' (or 'auto')."
        )
    if backward == "auto":
        return _choose_backward(rec, facts, K, blockers)
    return backward


def _choose_backward(rec, facts, K, blockers) -> str:
    """The adjoint is linear whatever the forward solver: pick the cheaper way to solve it."""
    if blockers:
        return "sequential"
    lin_t, _, _ = _predict("linear", facts, rec, K)
    seq_t, _, _ = _predict("sequential", facts, rec, K)
    return "linear" if lin_t < seq_t else "sequential"
