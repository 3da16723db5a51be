"""Long offline runs of the differential fuzzer (tests/fuzz_cells.py).

    python scripts/fuzz.py --cases 200 --seed 1000 --backend gpu --out fuzz.json
    python scripts/fuzz.py --seeds 11,42 --mode all -v       # re-run given seeds, every solver

Each case is a random small recurrence; every applicable solver (``--mode all``) or a
seed-rotated sample of them (``--mode sample``: auto, linear, one Newton solver, one forced
backward) is compared with ``lax.scan``, gradients with lax.scan's, and the analysis with
``jax.jacfwd``, with the planner on ``--backend``'s constants. The JSON summary (rewritten after
every case, so an interrupted run keeps what it found) lists the findings by class, each with
the case's description and a one-line reproducer.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=50, help="number of cases (seeds S, S+1, ...)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=str, default="", help="comma-separated seeds (overrides --cases/--seed)")
    ap.add_argument("--backend", default="gpu", help="constants the planner uses (cpu, gpu, tpu)")
    ap.add_argument("--mode", choices=("sample", "all"), default="sample")
    ap.add_argument("--max-T", type=int, default=None, help="cap the sequence length")
    ap.add_argument("--no-grads", action="store_true")
    ap.add_argument("--time-budget", type=float, default=None, help="stop starting new cases after this many s")
    ap.add_argument("--out", default="fuzz_summary.json")
    ap.add_argument("--full-compile", action="store_true",
                    help="XLA's default optimisation (by default the run compiles at -O0, ~25%% faster per case: "
                         "the fuzzer checks autopar's logic, and both sides of every comparison compile alike)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    if not args.full_compile and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()
    import jax

    jax.config.update("jax_enable_x64", True)  # as in the tests: float64 cases exist
    jax.config.update("jax_numpy_rank_promotion", "raise")  # as in the tests
    from tests.fuzz_cells import check_case, make_case, reproducer

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or list(range(args.seed, args.seed + args.cases))
    start = time.perf_counter()
    cases, times, findings, notes = [], [], [], collections.Counter()
    for seed in seeds:
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            break
        t = time.perf_counter()
        try:
            case = make_case(seed, max_T=args.max_T)
            found, infos = check_case(case, args.backend, grads=not args.no_grads, mode=args.mode)
            desc = case.desc
        except Exception as e:  # noqa: BLE001 - a harness error is itself worth reporting
            found, infos, desc = [], [f"HARNESS ERROR {type(e).__name__}: {e}"], "?"
            notes["harness-error"] += 1
        dt = time.perf_counter() - t
        times.append(dt)
        cases.append({"seed": seed, "desc": desc, "seconds": round(dt, 2), "findings": len(found),
                      **({"error": infos[0]} if desc == "?" else {})})
        for i in infos:
            if "refused" in i:
                notes["refusal"] += 1
            elif "converged=False" in i:
                notes["reported-not-converged"] += 1
        for f in found:
            d = f.as_dict()
            d.update(desc=desc, reproducer=reproducer(seed, args.backend))
            findings.append(d)
        status = "HARNESS ERROR" if desc == "?" else "ok" if not found else f"{len(found)} finding(s)"
        print(f"seed {seed:6d}  {dt:6.1f}s  {status:14s} {desc}", flush=True)
        if args.verbose:
            for i in infos:
                print("      .", i)
        if desc == "?":
            print(f"      ! {infos[0][:300]}", flush=True)
        for f in found:
            print(f"      ! {f.check:9s} {f.cls:38s} {f.solver:22s} {f.detail[:240]}", flush=True)
        _write(args, cases, times, findings, notes)
    by = collections.Counter(f["cls"] for f in findings)
    print(f"\n{len(cases)} cases in {sum(times):.0f}s ({(sum(times) / max(1, len(times))):.1f}s per case); "
          f"{len(findings)} findings in {len({f['seed'] for f in findings})} cases")
    for cls, n in by.most_common():
        print(f"  {n:4d}  {cls}")
    print(f"summary: {args.out}")
    return 1 if findings else 0


def _write(args, cases, times, findings, notes):
    by_class = collections.defaultdict(list)
    for f in findings:
        by_class[f["cls"]].append(f)
    out = {
        "backend": args.backend, "mode": args.mode, "max_T": args.max_T,
        "cases": len(cases), "seconds": round(sum(times), 1),
        "seconds_per_case": round(sum(times) / max(1, len(times)), 2),
        "failing_seeds": sorted({f["seed"] for f in findings}),
        "counts": {k: len(v) for k, v in sorted(by_class.items())},
        "notes": dict(notes),
        "findings_by_class": by_class,
        "case_log": cases,
    }
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    sys.exit(main())
