r"""Stage 3: choose a solver. The plan is data; the emitter is the only stage that builds programs.

For each registered solver the planner checks whether it applies to the proven
facts, predicts its work, depth, memory and time on the current backend, and
picks the cheapest one that applies and fits the memory budget (or the one the
user forced, after checking it applies). Every candidate's row is kept in
``Plan.candidates``, so ``explain()`` shows the table the choice came from.

**Cost model.** Each solver prices itself: ``solver.cost(facts, rec, K) -> Prediction`` with the
backend constants K of ``autopar.costs``, built from the shared formulas of
``autopar.solvers.pricing`` (sequential: T dependent steps; linear: extraction + one scan, depth
levels(T); the Newton family: iterations × (extraction + scans + residual)). The planner never
names a solver: it reads ``applies``, ``parallel``, ``cost`` and ``describe`` off the registry.

Memory is the peak the solver keeps alive: the output (T·D) for sequential; the
compact factors and offsets with the scan's temporaries (≈ 3·T·(s + D)) for the
parallel ones. A solver whose memory exceeds ``options["memory_budget"]``
(default: half the device memory, or of physical RAM on a CPU) is never chosen.

**Backward.** The adjoint is linear whatever the forward solver was, so the plan also picks how
to solve it, by the same rule over the strategies of ``autopar.adjoint`` (``backward="auto"``
considers those with ``auto``): the cheapest that applies and fits the budget.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

from . import adjoint, config, costs
from .adjoint import BACKWARD_MODES as BACKWARD_MODES
from .solvers import get_solver, sharded, solver_names
from .solvers.pricing import Prediction as Prediction
from .solvers.pricing import levels as levels

__all__ = ["Candidate", "Plan", "make_plan", "predict", "predict_backward"]


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
    work: float = math.nan  # predicted flops
    depth: float = math.nan  # predicted sequential depth (steps or scan levels)
    within_budget: bool = True
    note: str = ""  # what the solver does (its ``describe(facts)``), when it applies


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the emitter builds: forward solver, backward (adjoint) mode, structure, options."""

    solver: str
    backward: str  # the adjoint strategy of ``autopar.adjoint``: "linear", "sequential" or "autodiff"
    structure: Any
    candidates: tuple[Candidate, ...]
    reason: str
    backend: str
    options: dict = dataclasses.field(default_factory=dict)
    forced: bool = False
    memory_budget: float = math.inf
    backward_reason: str = ""
    constants: Any = None
    #: How integer state leaves are solved: "affine-scan" (exact associative scan) or "sequential".
    discrete: str = "sequential"
    #: The time-sharded plan (``autopar.solvers.sharded.ShardPlan``: mesh axis, P, communication), or None.
    shards: Any = None


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


# ---- the cost model ------------------------------------------------------------------
def predict(name: str, facts: Any, rec: Any, K: costs.BackendConstants) -> Prediction:
    """Predicted time, memory, iterations, work and depth of solver ``name`` on this recurrence."""
    return get_solver(name).cost(facts, rec, K)


def predict_backward(mode: str, facts: Any, rec: Any, K: costs.BackendConstants) -> Prediction:
    """Predicted cost of the adjoint solve ``mode`` (``"linear"``, ``"sequential"``, …: ``autopar.adjoint``)."""
    return adjoint.get_adjoint(mode).cost(facts, rec, K)


# ---- the choice ------------------------------------------------------------------------
def _budget(options: dict, backend: str) -> float:
    b = options.get("memory_budget")
    if b is None:
        return costs.default_memory_budget(backend)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
        raise ValueError(
            f"`memory_budget` must be a positive number of bytes (or None for half the device memory); got {b!r}."
        )
    return float(b)


def _fmt_time(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024:
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} PiB"


def make_plan(rec: Any, facts: Any, solver: str = "auto", backend: str | None = None,
              options: dict | None = None) -> Plan:
    """Choose the forward solver and the backward mode for ``rec`` given its ``facts``.

    ``solver="auto"`` picks the solver with the least predicted time among those that
    apply and fit ``options["memory_budget"]``; any other name is checked and used
    (``ValueError`` if it does not apply). ``backend`` selects the constants (default:
    JAX's default backend; pass ``"gpu"`` to see what autopar would do there).
    """
    options = dict(options or {})
    backend = config.resolve_backend(backend)  # explicit > autopar.config.planner_backend > JAX's
    K = costs.constants_for(backend)
    if solver != "auto":
        get_solver(solver)  # raises with the list of available solvers
    budget = _budget(options, backend)
    blockers = parallel_blockers(facts, rec)
    shards = sharded.ShardPlan.of(options, facts, rec, K)  # None unless called inside shard_map
    rows = []
    for name in solver_names():
        s = get_solver(name)
        ok, why = s.applies(facts, rec)
        if ok and s.parallel and blockers:
            ok, why = False, "; ".join(blockers)
        if ok and shards is not None and name not in sharded.SHARDED_SOLVERS:
            ok, why = False, f"no time-sharded form yet (sharded: {', '.join(sharded.SHARDED_SOLVERS)})"
        if ok:
            p = s.cost(facts, rec, K)
            if shards is not None:
                p = shards.price(s, p, K)
            fits = not (p.memory > budget)
            if not fits:
                why = f"{why}; but predicted memory {_fmt_bytes(p.memory)} exceeds memory_budget {_fmt_bytes(budget)}"
            rows.append(Candidate(name, True, p.time, p.memory, p.iterations, why, False, p.work, p.depth, fits,
                                  s.describe(facts)))
        else:
            rows.append(Candidate(name, False, math.nan, math.nan, math.nan, why))

    if solver != "auto":
        row = next(r for r in rows if r.solver == solver)
        if not row.applies:
            usable = ", ".join(repr(r.solver) for r in rows if r.applies)
            raise ValueError(
                f"solver={solver!r} does not apply to this cell: {row.reason}. "
                f"Use solver='auto' to let autopar choose, or one that applies: {usable}."
            )
        if not row.within_budget:
            warnings.warn(
                f"solver={solver!r} is predicted to need {_fmt_bytes(row.memory)}, more than "
                f"memory_budget={_fmt_bytes(budget)}; running it because it was forced.",
                stacklevel=3,
            )
        chosen, reason, forced = solver, f"forced by solver={solver!r}", True
    else:
        usable = [r for r in rows if r.applies and r.within_budget]
        if not usable:  # nothing fits: the least memory among those that apply
            best = min((r for r in rows if r.applies), key=lambda r: r.memory)
            reason = (f"no solver fits memory_budget {_fmt_bytes(budget)}; {best.solver} needs the least "
                      f"({_fmt_bytes(best.memory)})")
        else:
            best = min(usable, key=lambda r: (r.time, r.memory))
            others = sorted((r for r in usable if r.solver != best.solver), key=lambda r: r.time)
            if others:
                reason = (f"{best.solver} is predicted fastest on {backend} "
                          f"({_fmt_time(best.time)} vs {others[0].solver} {_fmt_time(others[0].time)})")
            else:
                reason = f"{best.solver} is the only solver that applies" + (
                    "" if len(usable) == sum(r.applies for r in rows) else " within the memory budget")
        chosen, forced = best.solver, False
    rows = tuple(dataclasses.replace(r, chosen=(r.solver == chosen)) for r in rows)

    backward, breason = _backward_mode(options.get("backward", "auto"), get_solver(chosen), rec, facts, K, blockers,
                                       budget)
    discrete = "affine-scan" if facts.get("discrete_affine") else "sequential"
    if shards is not None:
        shards = shards.chosen(next(r for r in rows if r.solver == chosen))
    return Plan(chosen, backward, facts["structure"], rows, reason, backend, options, forced, budget, breason, K, discrete,
                shards)


def _backward_mode(backward, solver, rec, facts, K, blockers, budget) -> tuple[str, str]:
    """Validate the user's ``backward=`` option against the strategies of ``autopar.adjoint`` and
    resolve ``"auto"``; returns (mode, reason)."""
    modes = adjoint.backward_modes()
    if backward not in modes:
        raise ValueError(f"`backward` must be one of {modes}; got {backward!r}.")
    if not adjoint.separable(rec) and not solver.parallel:
        # The adjoint needs the float recurrence on its own; JAX differentiates lax.scan directly.
        return "autodiff", "the float recurrence is not separable (integer leaves read it, or it is empty)"
    if backward != "auto":
        ok, why = adjoint.get_adjoint(backward).applies(facts, rec, blockers, solver)
        if not ok:
            others = [n for n in adjoint.adjoint_names()
                      if n != backward and adjoint.get_adjoint(n).applies(facts, rec, blockers, solver)[0]]
            hint = f"backward={others[0]!r} or " if others else ""
            raise ValueError(f"backward={backward!r} cannot be used: {why}. Use {hint}backward='auto'.")
        return backward, f"forced by backward={backward!r}"
    rows, declined = [], []
    for name in adjoint.adjoint_names():
        a = adjoint.get_adjoint(name)
        if not a.auto:
            continue
        ok, why = a.applies(facts, rec, blockers, solver)
        if ok:
            rows.append((a, a.cost(facts, rec, K)))
        else:
            declined.append(why)
    if not rows:
        raise ValueError(f"no adjoint strategy applies to this cell: {'; '.join(declined)}.")
    fits = [r for r in rows if not r[1].memory > budget]
    over = [f"a {a.name} adjoint would need {_fmt_bytes(p.memory)} > memory_budget" for a, p in rows if p.memory > budget]
    if not fits:
        best = min(rows, key=lambda r: r[1].memory)
        return best[0].name, f"no adjoint fits memory_budget; {best[0].name} needs the least ({_fmt_bytes(best[1].memory)})"
    best = min(fits, key=lambda r: (r[1].time, r[1].memory))
    others = sorted((r for r in fits if r is not best), key=lambda r: r[1].time)
    why = declined + over
    if others:
        (a, p), (b, q) = best, others[0]
        why.append(f"{a.description} predicted {_fmt_time(p.time)} vs {b.description} {_fmt_time(q.time)}")
    elif not why:
        why.append(f"{best[0].description} is the only adjoint that applies")
    return best[0].name, "; ".join(why)
