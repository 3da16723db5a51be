r"""``explain(..., measure=True)``: time the planner's candidates on the user's own arguments.

The planner's table is a prediction from the backend constants (``autopar.costs``; after
``autopar.calibrate()`` they are this machine's). ``measure`` checks it: every candidate that
applies and fits the memory budget runs the very program a call with ``solver=<name>`` would
run, on the arguments given to ``explain``, and the report shows the measured time next to the
predicted one.

How it measures (what a benchmark on a shared machine should do): each candidate is compiled
and run once first (compilation is not timed), then the candidates are timed **interleaved**,
round-robin, ``repeats`` rounds, each call blocked until ready; the report keeps the
**minimum** per candidate (other processes only ever add time). Candidates predicted at more
than ``MAX_PREDICTED_RATIO`` × the chosen one *and* more than ``SKIP_ABOVE`` seconds are not
run (an ELK on a cheap, long cell can take 100× the scan); their row says so. Only the forward
solve is timed, not the gradient. Each measured time includes the fixed cost of one eager call
(tens of µs of dispatch on a CPU), which the predictions leave out because every candidate
pays it alike: at tiny sizes measured/predicted is large for all of them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax

from . import _compat

__all__ = ["measure_candidates", "MAX_PREDICTED_RATIO", "SKIP_ABOVE", "DEFAULT_REPEATS"]

#: Candidates predicted slower than this multiple of the chosen one (and than SKIP_ABOVE) are not timed.
MAX_PREDICTED_RATIO = 20.0
SKIP_ABOVE = 0.01
DEFAULT_REPEATS = 3


def measure_candidates(forced: Callable[[str], Callable], plan: Any, h0: Any, xs: Any,
                       length: int | None = None, repeats: int = DEFAULT_REPEATS) -> dict:
    """solver name -> measured seconds (min over ``repeats`` interleaved rounds), or a string
    saying why that candidate was not timed. ``forced(name)`` is the function being explained
    with ``solver=name`` (same options), called as ``f(h0, xs, length=length)``."""
    if any(isinstance(a, _compat.Tracer) for a in jax.tree_util.tree_leaves((h0, xs))):
        raise RuntimeError("explain(..., measure=True) runs the candidates and must be called eagerly, "
                           "not inside jax.jit / vmap / grad (measure=False works there).")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"`measure` must be True, False or a positive number of repeats; got {repeats!r}.")
    chosen = next(c for c in plan.candidates if c.chosen)
    runs, out = {}, {}
    for c in plan.candidates:
        if not c.applies:
            continue
        if not c.within_budget:
            out[c.solver] = "not run: over the memory budget"
            continue
        if c.solver != chosen.solver and c.time > max(MAX_PREDICTED_RATIO * chosen.time, SKIP_ABOVE):
            out[c.solver] = f"not run: predicted > {MAX_PREDICTED_RATIO:g}× the choice"
            continue
        f = forced(c.solver)
        runs[c.solver] = (lambda f=f: f(h0, xs, length=length))
    for call in runs.values():  # compile and warm up: not timed
        jax.block_until_ready(call())
    best = {k: math.inf for k in runs}
    for _ in range(repeats):
        for k, call in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[k] = min(best[k], time.perf_counter() - t0)
    out.update(best)
    return {c.solver: out[c.solver] for c in plan.candidates if c.solver in out}
