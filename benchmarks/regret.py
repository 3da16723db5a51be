"""Regret of the automatic choice: on every benchmark cell, auto's time / the best forced candidate's.

    python -m benchmarks.regret --quick           # runs the suite's cells (small T)
    python -m benchmarks.regret --from results.json   # reads `benchmarks.run --json` output

"Forced candidates" are autopar with each solver that applies forced (sequential,
linear, the Newton family where available), timed side by side with auto in the
same run. auto runs the very program of the forced solver it chose, so auto's time
is taken as the faster of those two timings (the raw ratio is printed too): the
noise between two identical programs is not regret. Prints one line per (cell, T) and the worst ratio; the target is ≤ 1.10 (issue 14).
``--strict`` exits with status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .cells import CELLS  # noqa: E402
from .run import FULL_T, QUICK_T, run_suite  # noqa: E402
from .common import machine_description  # noqa: E402

TARGET = 1.10


def report(results, log=print) -> float:
    log(f"{'cell':>10} {'T':>7} {'kind':<8} {'auto chose':<22} {'best forced':<20} {'auto/best':>9} {'(raw)':>7}")
    for r in results:
        t = r["times"]
        best = r["best_forced"]
        log(f"{r['cell']:>10} {r['T']:>7} {r['kind']:<8} {r['choice'] + '/' + r['backward']:<22} "
            f"{best + f' {t[best] * 1e3:.3g} ms':<20} {r['regret']:>9.2f} {r.get('regret_raw', r['regret']):>7.2f}")
    worst = max(results, key=lambda r: r["regret"])
    ok = "meets" if worst["regret"] <= TARGET else "MISSES"
    log(f"worst auto/best: {worst['regret']:.2f} ({worst['cell']}, T={worst['T']}, {worst['kind']}) — "
        f"{ok} the target ≤ {TARGET:.2f}")
    return worst["regret"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from", dest="src", default=None, help="JSON written by `benchmarks.run --json`")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--T", default=None)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--grad", action="store_true", help="include the forward+gradient rows (backward choice)")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--skip", default="", help="comma-separated solvers not to force")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the worst ratio exceeds the target")
    args = ap.parse_args(argv)
    if args.src:
        results = json.loads(Path(args.src).read_text())["results"]
    else:
        print(f"# machine: {machine_description()}")
        Ts = tuple(int(t) for t in args.T.split(",")) if args.T else (QUICK_T if args.quick else FULL_T)
        results = run_suite([c for c in args.cells.split(",") if c], Ts, args.D,
                            repeats=3 if args.quick else 7, min_time=0.005 if args.quick else 0.05,
                            grad=args.grad, log=lambda *a: None, stat=args.stat,
                            skip=tuple(x for x in args.skip.split(",") if x))
    worst = report(results)
    if args.strict and worst > TARGET:
        sys.exit(1)
    return worst


if __name__ == "__main__":
    main()
