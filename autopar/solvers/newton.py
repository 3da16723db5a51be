r"""The Newton driver: one loop for every iterative solver, and the fallback chain.

An iterative solver is an ``Iteration``: ``init(V) -> State`` at the first iterate and
``step(State) -> State``, where a ``State`` carries the iterate V, its per-element residual
res(V) (``autopar.solvers.convergence``), whatever the method keeps between steps, and
whether the method can go on. deer / quasi-deer are "linearise at V, solve the structured
linear recurrence"; elk / quasi-elk "one damped smoother step with λ adaptation, then the
undamped polish near the solution". Everything else lives here, once (``iterate``):

* the ``lax.while_loop`` and the step cap ``max_iters``;
* the stop on tolerance, res(V) ≤ tol;
* the non-finite check: NaN or inf in V or in res(V) stops the stage (``Result.nonfinite``);
* the divergence check: res(V) > ``DIVERGENCE_FACTOR`` × max(res(V⁰), 1) stops it
  (``Result.diverged``), as does a method that reports it cannot go on (``State.stalled``);
* the best iterate (lowest res) — what the stage returns, and where the next stage starts;
* the residual history, one entry per iterate, shared by all stages of a chain.

A method whose every step is no worse than the last (``Iteration.monotone``: elk accepts a
step only if it lowers its merit) returns its current iterate, and is not checked for
divergence.

**Fallback chain.** ``Solver.chain()`` names the stages, the solver itself first (deer → elk →
sequential). Each name is resolved through the solver registry: a solver with a ``stage``
method joins as that iterative stage; any other (sequential) as an exact stage that runs its
``solve`` and adds no iterations. ``run_chain`` runs the first stage; each later one runs only
if every earlier one failed (``lax.cond``), from the best iterate so far; with
``fallback=False`` only the first runs. The outcome is the ``Result`` of the stage that produced
the result, or ``Result.fell_back`` when that converged stage is not the first.

**Under ``jax.vmap``.** Iterations are *shared* across the batch: a batched
``lax.while_loop`` runs until every sequence has stopped, but JAX freezes the carry of
sequences that already stopped, so each sequence's result, iteration count and history are
its own. A batched ``lax.cond`` evaluates both branches and selects, so under vmap a fallback
stage costs its full run whenever any sequence needed it (results are still selected per
sequence).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from . import convergence as cv
from .base import Problem, Solver, Stats, get_solver
from .result import Result

__all__ = ["DIVERGENCE_FACTOR", "STALL_ITERS", "STALL_ITERS_FAR", "STALL_LEVEL", "State", "Iteration", "Stage", "StageResult", "iterate", "newton_stage",
           "exact_stage", "run_chain", "solve", "empty_stats"]

#: A stage fails when its residual exceeds this factor × max(initial residual, 1).
DIVERGENCE_FACTOR = 1e4
#: A stage with ``Iteration.verify`` stops after this many steps without a new best residual,
#: once that best is within ``STALL_LEVEL`` × tol (the float-rounding regime; farther out a
#: quasi method's residual may rise for a while before it converges, and it goes on) ...
STALL_ITERS = 4
STALL_LEVEL = 100.0
#: ... and after this many at any level: a quasi method's own measure (diag J only) can level off
#: far above tol on a trajectory the full measure already accepts (a dense tanh RNN, D = 32,
#: T = 65536, float32: ~1e-3, 300 × tol, while the full measure scores 3.5e-7), and it would
#: otherwise run to max_iters. The stopped iterate is judged by ``verify``; failing that the
#: stage is ``stalled`` and the chain falls back, so the cost of stopping early is time, never
#: a wrong answer.
STALL_ITERS_FAR = 16


def _code(result: Result):
    return jnp.asarray(int(result), jnp.int32)


class State(NamedTuple):
    """One iterate as a method hands it to the driver."""

    V: Any  # the iterate (T, D)
    r: Any  # res(V), float32 scalar
    aux: Any = ()  # what the method carries to its next step (f values, J, merit, λ, …)
    stalled: Any = False  # the method can make no further progress (elk: λ past its cap)


class Iteration(NamedTuple):
    """An iterative method: ``init(V⁰) -> State``, ``step(State) -> State``."""

    init: Callable[[Any], State]
    step: Callable[[State], State]
    monotone: bool = False  # every step is no worse than the last: the current iterate is the best
    #: ``verify(V) -> res(V)`` by the documented measure (``linear.proven_residual``: the proven
    #: structure's J and the input's inflow), for a method whose per-step measure is stricter
    #: (it leaves out the input's inflow, and a quasi method's |diag J| what flows in off the
    #: diagonal, so at float rounding its residual can sit above tol — lax.scan's own
    #: trajectory of a float32 diagonal GRU scores 5e-6 to 9e-6 against tol 3.8e-6). Such a
    #: stage also stops when its best residual, within ``STALL_LEVEL`` × tol, has not improved
    #: for ``STALL_ITERS`` steps, or at any level for ``STALL_ITERS_FAR`` steps
    #: (``Result.stalled``); an iterate that misses the method's own tol is then judged by ``verify``.
    verify: Callable[[Any], Any] | None = None
    #: The causal window (deer's ``causal`` option): ((width, step), …), widths decreasing, each a
    #: step that updates only the last ``width`` steps; the driver moves to the next once
    #: ``active(state)`` (the unconverged suffix's length) fits in it. Empty: ``step`` throughout.
    phases: tuple = ()
    active: Callable[[State], Any] | None = None


class StageResult(NamedTuple):
    """What one stage of a chain returns (traced arrays)."""

    vs: Any  # the best iterate (T, D)
    result: Any  # int32 Result code of this stage
    iterations: Any  # int32: iterations this stage ran
    history: Any  # (H,) residuals of the whole chain so far, NaN padded
    count: Any  # int32: history entries written so far


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage of a fallback chain: ``run(V_start, history, count) -> StageResult``; ``slots``
    is how many history entries it may write."""

    name: str
    run: Callable[[Any, Any, Any], StageResult]
    slots: int = 0


def iterate(method: Iteration, V, history, count, *, tol: float, max_iters: int) -> StageResult:
    """Run ``method`` from V until res ≤ ``tol``, ``max_iters`` steps, or a failure (module docstring)."""
    s = method.init(V)
    history = history.at[count].set(s.r)
    limit = None if method.monotone else DIVERGENCE_FACTOR * jnp.maximum(s.r, 1.0)

    def failure(s):
        """The Result code of why ``s`` stops the stage; ``converged`` (0) if it does not."""
        code = jnp.where(s.stalled, _code(Result.diverged), _code(Result.converged))
        if limit is not None:
            code = jnp.where(s.r > limit, _code(Result.diverged), code)
        return jnp.where(jnp.isfinite(s.r) & cv.finite(s.V), code, _code(Result.nonfinite))

    stalls = method.verify is not None

    def stalled(track):
        low, since = track
        return ((since >= STALL_ITERS) & (low <= STALL_LEVEL * tol)) | (since >= STALL_ITERS_FAR)

    def cond(c):
        i, s, _, _, code, _, _, track = c
        go = (i < max_iters) & (s.r > tol) & (code == Result.converged)
        return go & ~stalled(track) if stalls else go

    def body_of(step):
        def body(c):
            i, s, best_V, best_r, _, hist, cnt, (low, since) = c
            s = step(s)
            hist = hist.at[cnt + 1].set(s.r)
            if not method.monotone:
                better = s.r < best_r
                best_V = jnp.where(better, s.V, best_V)
                best_r = jnp.where(better, s.r, best_r)
            if stalls:
                since = jnp.where(s.r < low, 0, since + 1)
                low = jnp.minimum(low, s.r)
            return i + 1, s, best_V, best_r, failure(s), hist, cnt + 1, (low, since)

        return body

    # a monotone method's current iterate is its best: no second copy of V in the carry
    best = ((), ()) if method.monotone else (s.V, s.r)
    track = (s.r, jnp.asarray(0, jnp.int32)) if stalls else ((), ())
    carry = (jnp.asarray(0, jnp.int32), s, *best, failure(s), history, count, track)
    steps = [method.step] + [st for _, st in method.phases]
    nexts = [w for w, _ in method.phases] + [None]
    for step, nxt in zip(steps, nexts):  # one loop per window width (one loop without phases)
        def cond_phase(c, nxt=nxt):
            go = cond(c)
            return go if nxt is None else go & (method.active(c[1]) > nxt)

        carry = jax.lax.while_loop(cond_phase, body_of(step), carry)
    i, s, best_V, best_r, code, history, count, track = carry
    V, r = (s.V, s.r) if method.monotone else (best_V, best_r)
    stop = jnp.where(code == Result.converged, _code(Result.max_iterations), code)
    if stalls:  # the stricter measure missed: judge the iterate by the documented one
        stop = jnp.where((code == Result.converged) & stalled(track), _code(Result.stalled), stop)
        r = jax.lax.cond((r > tol) & (code == Result.converged), method.verify, lambda V: r, V)
    return StageResult(V, jnp.where(r <= tol, _code(Result.converged), stop), i, history, count + 1)


def newton_stage(name: str, method: Iteration, tol: float, max_iters: int) -> Stage:
    """``method`` as a chain stage, driven by ``iterate``."""

    def run(V, history, count):
        return iterate(method, V, history, count, tol=tol, max_iters=max_iters)

    return Stage(name, run, max_iters + 1)


def exact_stage(solver: Solver, problem: Problem) -> Stage:
    """A direct solver (sequential) as a chain stage: its ``solve``, ignoring the start; no iterations."""

    def run(V, history, count):
        vs, stats = solver.solve(problem)
        return StageResult(vs, jnp.asarray(stats.result, jnp.int32), jnp.asarray(0, jnp.int32), history, count)

    return Stage(solver.name, run)


def _stage(solver: Solver, problem: Problem) -> Stage:
    make = getattr(solver, "stage", None)
    return make(problem) if make is not None else exact_stage(solver, problem)


def run_chain(problem: Problem, stages: Sequence[Stage]):
    """Run ``stages`` as a fallback chain (module docstring); returns (vs, Stats).

    ``Stats.iterations`` is the total over the stages that ran (the cost actually paid).
    """
    V0 = cv.initial_guess(problem)
    hist = jnp.full((max(sum(s.slots for s in stages), 1),), jnp.nan, jnp.float32)
    first = stages[0].run(V0, hist, jnp.asarray(0, jnp.int32))
    carry = (first.vs, first.result, first.iterations, first.history, first.count, jnp.asarray(0, jnp.int32))
    later = stages[1:] if problem.options.get("fallback", True) is not False else ()
    for k, stage in enumerate(later, start=1):

        def run_next(c, stage=stage, k=k):
            vs, _, its, h, cnt, _ = c
            r = stage.run(jnp.where(cv.finite(vs), vs, V0), h, cnt)
            return (r.vs, r.result, its + r.iterations, r.history, r.count, jnp.asarray(k, jnp.int32))

        carry = jax.lax.cond(carry[1] == Result.converged, lambda c: c, run_next, carry)
    vs, result, its, hist, _, idx = carry
    converged = result == Result.converged
    result = jnp.where(converged & (idx > 0), _code(Result.fell_back), result)
    return vs, Stats(its, converged, idx, hist, result)


def solve(solver: Solver, problem: Problem):
    """``solver.solve`` for a solver with a fallback chain: its ``chain()`` resolved by name."""
    if problem.length == 0:
        return jnp.zeros((0, problem.v0.shape[0]), problem.dtype), empty_stats()
    stages = [_stage(solver, problem)] + [_stage(get_solver(n), problem) for n in solver.chain()[1:]]
    start = int(problem.options.get("chain_start", 0))
    if not start:
        return run_chain(problem, stages)
    # the rest of the chain after stage ``start - 1`` failed (the lazy chain: ``options['init']``
    # is that stage's best iterate): indices into the whole chain, and a converged result fell back
    vs, st = run_chain(problem, stages[start:])
    result = jnp.where(st.converged, _code(Result.fell_back), st.result)
    return vs, Stats(st.iterations, st.converged, st.solver_index + start, st.history, result)


def empty_stats() -> Stats:
    """T = 0: nothing to solve, converged."""
    return Stats(jnp.asarray(0, jnp.int32), jnp.asarray(True), jnp.asarray(0, jnp.int32),
                 jnp.full((1,), jnp.nan, jnp.float32), _code(Result.converged))
