"""The cost model against the clock: each suite cell's priced and measured forward time of its
sequential loop and (affine cells) its linear scan, in ns a step.

Each program is autopar's forced solver under ``jax.jit`` (no eager dispatch), timed side by
side with the others of the same cell (min of ``--repeats`` interleaved rounds); "priced" is the
planner's prediction with this process's constants (``autopar.costs.constants_for``). A ratio
far from 1 on one cell and not the others is where the model misses a mechanism; the planner
only needs the order of the two right, not their values.

``--grad`` does the same for the two adjoints (``backward="sequential"`` / ``"linear"``): priced
is ``autopar.plan.predict_backward``, measured the jitted forward + gradient (w.r.t. the cell's
weights passed as arguments, h0 and xs, as in ``benchmarks.run``) minus auto's forward alone.

    PYTHONPATH=. python3 benchmarks/model_fit.py                     # every cell, T = 4096
    PYTHONPATH=. python3 benchmarks/model_fit.py --T 512 --cells multi-axis,mamba-ssm
    PYTHONPATH=. python3 benchmarks/model_fit.py --grad              # the adjoints
"""

from __future__ import annotations

import argparse
import functools
import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402

import autopar  # noqa: E402
from autopar import plan, trace  # noqa: E402
from benchmarks.cells import CELLS, make_cell  # noqa: E402
from benchmarks.common import machine_description, side_by_side  # noqa: E402
from benchmarks.run import grad_contenders, parameterized  # noqa: E402

SOLVERS = ("linear", "sequential")


def fit(name: str, T: int, repeats: int) -> dict:
    """{solver: (priced s, measured s)} of one cell at length T."""
    cell, h0, xs_fn, _ = make_cell(name, 16)
    xs = xs_fn(T)
    report = autopar.parallelize(cell).explain(h0, xs)
    priced = {c.solver: c.time for c in report.plan.candidates if c.applies and c.solver in SOLVERS}
    fns = {}
    for solver in priced:
        fn = autopar.parallelize(cell, solver=solver)
        run = jax.jit(lambda h, x, fn=fn: fn(h, x))
        fns[solver] = lambda run=run: run(h0, xs)
    measured = side_by_side(fns, repeats=repeats, stat="min")
    return {s: (priced[s], measured[s]) for s in priced}


def fit_backward(name: str, T: int, repeats: int) -> dict:
    """{backward mode: (priced s, measured s)}: each adjoint's price against the jitted forward +
    gradient (``benchmarks.run.grad_contenders``: the cell's weights passed as arguments) minus
    auto's forward with the weights passed the same way."""
    cell, h0, xs_fn, _ = make_cell(name, 16)
    xs = xs_fn(T)
    grads, report = grad_contenders(cell, h0, xs)
    rec = trace.trace_cell(cell, h0, xs, None, name=name)
    step, params = parameterized(cell, h0, xs)
    fwd = jax.jit(lambda p, h, x: autopar.parallelize(functools.partial(step, p))(h, x))
    fns = {"forward": lambda: fwd(params, h0, xs)}
    priced = {}
    for mode in SOLVERS:
        if f"backward={mode}" in grads:  # the mode applies
            fns[mode] = grads[f"backward={mode}"]
            priced[mode] = plan.predict_backward(mode, report.facts, rec, report.plan.constants).time
    measured = side_by_side(fns, repeats=repeats, stat="min")
    return {m: (priced[m], measured[m] - measured["forward"]) for m in priced}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--grad", action="store_true", help="the two adjoints instead of the forward solvers")
    args = ap.parse_args(argv)
    unknown = [c for c in args.cells.split(",") if c not in CELLS]
    if unknown:
        ap.error(f"--cells: unknown {unknown}; choose from {', '.join(CELLS)}")
    what = "backward (gradient − forward)" if args.grad else "forward"
    print(f"# cost model vs measured, {what}, T = {args.T}, ns a step — {machine_description()}")
    print(f"{'cell':>14}  " + "  ".join(f"{s + ' priced/measured':>32}" for s in SOLVERS))
    for name in args.cells.split(","):
        rows = (fit_backward if args.grad else fit)(name, args.T, args.repeats)
        cols = []
        for s in SOLVERS:
            if s in rows:
                p, m = (v / args.T * 1e9 for v in rows[s])
                cols.append(f"{p:9.1f} / {m:9.1f}  ({m / p:4.2f}×)")
            else:
                cols.append(f"{'—':>32}")
        print(f"{name:>14}  " + "  ".join(f"{c:>32}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
