r"""Stage 3: choose a solver. The plan is data; the emitter is the only stage that builds programs.

For each registered solver the planner checks whether it applies to the proven
facts, predicts its work, depth, memory and time on the current backend, and
picks the cheapest one that applies and fits the memory budget (or the one the
user forced, after checking it applies). Every candidate's row is kept in
``Plan.candidates``, so ``explain()`` shows the table the choice came from.

**Cost model** (T steps, D state floats, f the flops of one step, s the compact
floats of one J_t, c its compose flops, m its matvec flops, K the backend
constants of ``autopar.costs``; bytes are streamed at ``K.bytes_per_s``):

* sequential: ``T · (K.step_overhead + n_ops·K.op_overhead + f / K.seq_flops + bytes_t / K.bytes_per_s)``
  where n_ops counts the step's non-fusable ops (dots, reductions, gathers; complex ones
  weigh ``K.complex_op_factor``); depth T.
* linear = extraction + scan. Extraction (the step linearised and vmapped over
  T, one primal and ``n_jvps`` tangents) ``T·f·(1 + n_jvps) / K.par_flops`` plus its
  traffic; the associative scan ``levels(T)·K.level_overhead + T·(s + D)·K.scan_elem_time
  + 2T·(c + m) / K.par_flops`` with ``levels(T) = 2⌈log₂T⌉``, plus ``K.parallel_overhead``;
  depth levels(T).
* Newton family (deer, quasi-deer, elk, …): ``iters × (extraction + scan + one
  vmapped residual)``, ``iters = solver.predict_iterations(facts, rec)``; quasi
  variants scan diag(J); elk-type smoothers run about three scans per iteration.
  A solver may instead define ``predict_cost(facts, rec, K) -> (seconds, bytes,
  iterations)``.

Memory is the peak the solver keeps alive: the output (T·D) for sequential; the
compact factors and offsets with the scan's temporaries (≈ 3·T·(s + D)) for the
parallel ones. A solver whose memory exceeds ``options["memory_budget"]``
(default: half the device memory, or of physical RAM on a CPU) is never chosen.

**Backward.** The adjoint λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1} is linear whatever the
forward solver was, so the plan also picks how to solve it — a reverse
``lax.scan`` of per-step VJPs or one structure-aware reverse linear scan —
with the same constants.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import jax
import numpy as np

from . import config, costs
from .solvers import SOLVER_NAMES, get_solver, solver_names
from .structure import Diagonal

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
    memory_budget: float = math.inf
    backward_reason: str = ""
    constants: Any = None
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


# ---- the cost model ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prediction:
    time: float
    memory: float
    iterations: float
    work: float
    depth: float


def _sizes(rec):
    T, D = max(int(rec.length), 1), int(rec.size)
    dt = np.dtype(rec.layout.vec_dtype)
    isz = dt.itemsize
    cplx = 4.0 if np.issubdtype(dt, np.complexfloating) else 1.0  # real flops per complex multiply-add
    xb = float(sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in rec.x_avals))
    # consts may be tracers (a cell closing over values of an outer jit): read shapes/dtypes only
    const_floats = float(sum(int(np.prod(np.shape(c), dtype=np.int64)) for c in rec.consts
                             if np.issubdtype(np.dtype(getattr(c, "dtype", np.float32)), np.inexact)))
    return T, D, isz, cplx, xb, const_floats


def _seq_step_ops(rec, K) -> float:
    """Seconds of fixed per-op cost in one sequential step."""
    real, cplx = costs.step_ops(rec.step_jaxpr)
    return (real + K.complex_op_factor * cplx) * K.op_overhead


def levels(T: int) -> int:
    """Sequential depth of ``lax.associative_scan`` over T elements (up- and down-sweep)."""
    return 2 * math.ceil(math.log2(T)) if T > 1 else 1


def _extract(T, D, fl, st, isz, xb, K):
    """Linearise the step at T points (vmapped): one primal + n_jvps tangents."""
    work = T * fl * (1 + st.n_jvps)
    traffic = T * (xb + (D + st.floats()) * isz)
    return work / K.par_flops + traffic / K.bytes_per_s, work


def _scan(T, D, st, isz, cplx, K):
    work = 2.0 * T * (st.compose_flops() + st.matvec_flops() + D) * cplx
    elems = st.floats() + D + st.scan_elements()
    t = levels(T) * K.level_overhead + T * elems * K.scan_elem_time * (isz / 4) + work / K.par_flops
    return t, work


def predict(name: str, facts: Any, rec: Any, K: costs.BackendConstants) -> Prediction:
    """Predicted time, memory, iterations, work and depth of solver ``name`` on this recurrence."""
    T, D, isz, cplx, xb, _ = _sizes(rec)
    st = facts["structure"]
    fl = float(facts.get("step_flops", 1.0)) * cplx
    if name == "sequential":
        t = T * (K.step_overhead + _seq_step_ops(rec, K) + fl / K.seq_flops + (D * isz + xb) / K.bytes_per_s)
        return Prediction(t, T * D * isz, 1.0, T * fl, float(T))
    solver = get_solver(name)
    custom = getattr(solver, "predict_cost", None)
    if callable(custom):
        t, m, it = custom(facts, rec, K)
        return Prediction(float(t), float(m), float(it), math.nan, math.nan)
    quasi = name.startswith("quasi")
    # quasi solvers read only diag(J) (one structured pass, ~ a JVP), whatever the structure
    t_ex, w_ex = _extract(T, D, fl, Diagonal(D) if quasi else st, isz, xb, K)
    if name == "linear":
        t_sc, w_sc = _scan(T, D, st, isz, cplx, K)
        mem = 3.0 * T * (st.floats() + D) * isz
        return Prediction(K.parallel_overhead + t_ex + t_sc, mem, 1.0, w_ex + w_sc, float(levels(T)))
    # Newton family
    iters = float(solver.predict_iterations(facts, rec))
    scan_st = Diagonal(D) if quasi else st
    n_scans = 3.0 if "elk" in name else 1.0
    t_sc, w_sc = _scan(T, D, scan_st, isz, cplx, K)
    t_res = T * fl / K.par_flops + T * (xb + 2 * D * isz) / K.bytes_per_s
    per_iter = t_ex + n_scans * t_sc + t_res
    mem = 3.0 * T * (scan_st.floats() + D) * isz * (2.0 if "elk" in name else 1.0) + 2.0 * T * D * isz
    return Prediction(K.parallel_overhead + iters * per_iter, mem, iters, iters * (w_ex + n_scans * w_sc + T * fl),
                      iters * n_scans * levels(T))


def predict_backward(mode: str, facts: Any, rec: Any, K: costs.BackendConstants) -> Prediction:
    """Predicted cost of the adjoint solve: ``"sequential"`` (reverse lax.scan of VJPs) or ``"linear"``."""
    T, D, isz, cplx, xb, const_floats = _sizes(rec)
    st = facts["structure"]
    fl = float(facts.get("step_flops", 1.0)) * cplx
    if mode == "sequential":
        # each step: one VJP (≈ 3 step evaluations) and the accumulation of the consts' cotangents
        # the reverse loop body does not fuse like a forward step: price it per VJP equation
        body = max(2.0 * _seq_step_ops(rec, K), facts.get("vjp_eqns", 0) * K.vjp_eqn_time * cplx)
        per = (K.step_overhead + body + (3.0 * fl + const_floats * cplx) / K.seq_flops
               + (2 * D * isz + 2 * xb) / K.bytes_per_s)
        return Prediction(T * per, 2.0 * T * D * isz + T * xb, 1.0, T * (3 * fl + const_floats), float(T))
    t_ex, w_ex = _extract(T, D, fl, st, isz, xb, K)
    t_sc, w_sc = _scan(T, D, st, isz, cplx, K)
    t_vjp = 3.0 * T * fl / K.par_flops + T * (2 * xb + 3 * D * isz) / K.bytes_per_s
    mem = 3.0 * T * (st.floats() + D) * isz + T * xb
    return Prediction(K.parallel_overhead + t_ex + t_sc + t_vjp, mem, 1.0, w_ex + w_sc + 3 * T * fl, float(levels(T)))


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
    rows = []
    for name in solver_names():
        s = get_solver(name)
        ok, why = s.applies(facts, rec)
        if ok and s.parallel and blockers:
            ok, why = False, "; ".join(blockers)
        if ok:
            p = predict(name, facts, rec, K)
            fits = not (p.memory > budget)
            if not fits:
                why = f"{why}; but predicted memory {_fmt_bytes(p.memory)} exceeds memory_budget {_fmt_bytes(budget)}"
            rows.append(Candidate(name, True, p.time, p.memory, p.iterations, why, False, p.work, p.depth, fits))
        else:
            rows.append(Candidate(name, False, math.nan, math.nan, math.nan, why))

    if solver != "auto":
        row = next(r for r in rows if r.solver == solver)
        if not row.applies:
            raise ValueError(
                f"solver={solver!r} does not apply to this cell: {row.reason}. "
                "Use solver='auto' to let autopar choose, or solver='sequential'."
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

    backward, breason = _backward_mode(options.get("backward", "auto"), chosen, rec, facts, K, blockers, budget)
    discrete = "affine-scan" if facts.get("discrete_affine") else "sequential"
    return Plan(chosen, backward, facts["structure"], rows, reason, backend, options, forced, budget, breason, K, discrete)


BACKWARD_MODES = ("auto", "linear", "sequential", "autodiff")


def per_step_adjoint(facts) -> str:
    """Why the adjoint must run the cell's own VJP step by step (as lax.scan's gradient does), or "".

    A custom_vjp's backward rule, and the AD rules of rounding (which round the tangents and
    cotangents themselves), are not a linear map a compact J can hold: the linear adjoint reads J
    from forward mode and would give the exact derivative of an unrounded / unclipped cell."""
    why = []
    if facts.get("custom_vjp"):
        why.append(f"the cell calls a custom_vjp ({', '.join(facts['custom_vjp'])}) on the state")
    if facts.get("rounding"):
        why.append(f"the cell rounds a state-dependent value ({', '.join(facts['rounding'])})")
    return "; ".join(why) + ": its AD rules apply per step, as in lax.scan's gradient" if why else ""
_EXACT_SOLVERS = ("sequential", "linear")


def _backward_mode(backward, solver, rec, facts, K, blockers, budget) -> tuple[str, str]:
    """Validate the user's ``backward=`` option and resolve ``"auto"``; returns (mode, reason).

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
        if solver == "sequential":
            return "autodiff", "the float recurrence is not separable (integer leaves read it, or it is empty)"
        return backward, f"forced by backward={backward!r}"
    per_step = per_step_adjoint(facts)
    if per_step:
        if backward == "linear":
            raise ValueError(f"backward='linear' cannot be used: {per_step}. Use backward='sequential' (or 'auto').")
        if backward == "auto":
            return "sequential", per_step
    if backward == "linear" and blockers:
        raise ValueError(
            "backward='linear' needs the adjoint recurrence in a parallel form, but "
            + "; ".join(blockers) + ". Use backward='sequential' (or 'auto')."
        )
    if backward == "auto":
        return _choose_backward(rec, facts, K, blockers, budget)
    return backward, f"forced by backward={backward!r}"


def _choose_backward(rec, facts, K, blockers, budget) -> tuple[str, str]:
    """The adjoint is linear whatever the forward solver: pick the cheaper way to solve it."""
    if blockers:
        return "sequential", "; ".join(blockers)
    lin = predict_backward("linear", facts, rec, K)
    seq = predict_backward("sequential", facts, rec, K)
    if lin.memory > budget:
        return "sequential", f"a linear adjoint would need {_fmt_bytes(lin.memory)} > memory_budget"
    if lin.time < seq.time:
        return "linear", f"reverse linear scan predicted {_fmt_time(lin.time)} vs reverse lax.scan {_fmt_time(seq.time)}"
    return "sequential", f"reverse lax.scan predicted {_fmt_time(seq.time)} vs reverse linear scan {_fmt_time(lin.time)}"
