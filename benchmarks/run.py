"""The benchmark suite: one command, a markdown table, optional plots.

    python -m benchmarks.run --quick                 # seconds-scale smoke run
    python -m benchmarks.run --out results.md --json results.json --plots docs/img
    python -m benchmarks.run --grad                  # also forward+gradient timings

For each cell (diagonal linear SSM, LRU, diagonal GRU, dense GRU, LSTM, DeltaNet)
and each T, every contender is timed side by side in one run (interleaved rounds,
blocked until ready, compile excluded, median): ``lax.scan``, a hand-written
associative scan (affine cells), autopar ``auto`` and autopar with every solver
forced that applies. Solvers that are registered but do not apply, and public
solver names not available in this version, are listed as notes instead of rows.

It also checks issue 2's targets on the diagonal cell ``h ← a ⊙ h + x`` (D = 16):
forced ``linear`` within 1.15× of the hand-written scan, and ``auto`` within 1.25×
of the faster of ``sequential`` and ``linear``.

Time: ``--quick`` takes well under a minute on a 2-core CPU; the full run takes longer.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import autopar  # noqa: E402
from autopar.calibrate import scan_program  # noqa: E402
from autopar.solvers import SOLVER_NAMES, solver_names  # noqa: E402

from .cells import CELLS, make_cell  # noqa: E402
from .common import machine_description, side_by_side  # noqa: E402

QUICK_T = (256, 4096)
FULL_T = (256, 1024, 4096, 16384, 65536)


_scan_fn = scan_program  # the lax.scan baseline, the same program calibrate() measures


def contenders(cell, h0, xs, hand, skip=()):
    """name -> zero-arg callable, plus the auto report, notes and per-solver iteration counts."""
    fns = {"lax.scan": (lambda f=_scan_fn(cell): f(h0, xs))}
    if hand is not None:
        hj = jax.jit(hand)
        fns["hand"] = lambda: hj(h0, xs)
    auto = autopar.parallelize(cell)
    report = auto.explain(h0, xs)
    fns["auto"] = lambda: auto(h0, xs)
    notes, iters = [], {}
    for row in report.candidates:
        if not row.applies:
            notes.append(f"{row.solver}: does not apply ({row.reason})")
            continue
        if row.solver in skip:
            notes.append(f"{row.solver}: skipped (--skip)")
            continue
        f = autopar.parallelize(cell, solver=row.solver)
        fns[row.solver] = (lambda f=f: f(h0, xs))
        _, info = f(h0, xs, return_info=True)
        iters[row.solver] = int(np.asarray(info.iterations))
    missing = [n for n in SOLVER_NAMES if n != "auto" and n not in solver_names()]
    if missing:
        notes.append(f"not available in this version: {', '.join(missing)}")
    return fns, report, notes, iters


def parameterized(cell, h0, xs):
    """``(step, params)``: ``step(params, h, x)`` is ``cell(h, x)`` with the cell's closed-over
    floating-point arrays (its weights) taken as the argument ``params`` instead; other
    constants (index arrays, …) stay closed over.

    A training step passes its weights to the jitted program as arguments. A cell that closes
    over concrete arrays instead hands them to XLA as compile-time constants, and XLA folds
    what depends only on them — a constant transition's powers in a linear scan, for one — so
    the program timed is not the one a user trains."""
    x0 = jax.tree_util.tree_map(lambda a: a[0], xs)
    closed, out_shape = jax.make_jaxpr(cell, return_shape=True)(h0, x0)
    out_tree = jax.tree_util.tree_structure(out_shape)
    is_param = [jnp.issubdtype(jnp.result_type(c), jnp.inexact) for c in closed.consts]
    params = [c for c, p in zip(closed.consts, is_param) if p]
    fixed = [c for c, p in zip(closed.consts, is_param) if not p]

    def step(params, h, x):
        it_p, it_f = iter(params), iter(fixed)
        consts = [next(it_p) if p else next(it_f) for p in is_param]
        out = jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree_util.tree_leaves((h, x)))
        return jax.tree_util.tree_unflatten(out_tree, out)

    return step, params


def grad_contenders(cell, h0, xs):
    """Forward + gradient of sum(|hs|²) w.r.t. the cell's weights, h0 and xs, the weights passed to
    the jitted program as arguments (as in training; ``parameterized``): lax.scan backprop vs
    autopar's adjoints."""
    step, params = parameterized(cell, h0, xs)

    def loss_of(run_with):  # run_with(cell) -> (h0, xs) -> hs
        def loss(params, h0, xs):
            hs = run_with(functools.partial(step, params))(h0, xs)
            return jnp.sum(jnp.abs(jnp.stack(jax.tree_util.tree_leaves(hs))) ** 2)
        g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return lambda: g(params, h0, xs)

    fns = {"lax.scan": loss_of(_scan_fn), "auto": loss_of(autopar.parallelize)}
    for bw in ("sequential", "linear"):
        try:
            autopar.parallelize(cell, backward=bw).explain(h0, xs)
        except ValueError:
            continue
        fns[f"backward={bw}"] = loss_of(functools.partial(autopar.parallelize, backward=bw))
    report = autopar.parallelize(cell).explain(h0, xs)
    return fns, report


#: A row where auto's program was not the fastest is timed again, its contenders only, for this
#: many times the rounds, and scored on all the samples: a close call between two programs is
#: resolved by more samples of both, not by the first few (identical programs differed by up to
#: 27 % in one run on the shared 2-core CPU).
RETIME_FACTOR = 3

_REDUCE = {"median": statistics.median, "min": min}


def timed_regret(fns, forced, chosen, repeats, min_time, stat="median"):
    """Time ``fns`` side by side and score auto: ``(times, best, regret, regret_raw, retimed)``.

    ``forced``: the names of the forced contenders; ``chosen``: the one running auto's own program
    (auto's time is the faster of the two: the noise between identical programs is not regret).
    When auto's program lost, auto, ``chosen`` and the fastest other contender are timed again for
    ``RETIME_FACTOR`` × ``repeats`` rounds and every sample of both runs counts; ``retimed`` is the
    number of rounds added (0 when none)."""
    first = side_by_side(fns, repeats=repeats, min_time=min_time, stat=stat)
    samples = {k: list(v) for k, v in first.samples.items()}

    def score():
        times = {k: _REDUCE[stat](v) for k, v in samples.items()}
        timed = {k: times[k] for k in forced}
        if not timed:
            return times, "auto", 1.0, 1.0
        best = min(timed, key=timed.get)
        twin = min(times["auto"], timed.get(chosen, math.inf))
        return times, best, twin / timed[best], times["auto"] / timed[best]

    times, best, regret, raw = score()
    retimed = 0
    if regret > 1.0:
        names = [k for k in dict.fromkeys(("auto", chosen, best)) if k in fns]
        more = side_by_side({k: fns[k] for k in names}, repeats=RETIME_FACTOR * repeats, min_time=min_time,
                            stat=stat, warmup=0)
        for k in names:
            samples[k] += more.samples[k]
        retimed = RETIME_FACTOR * repeats
        times, best, regret, raw = score()
    return times, best, regret, raw, retimed


def run_suite(cells, Ts, D, repeats, min_time, grad=False, log=print, stat="median", skip=()):
    results = []
    for name in cells:
        for T in Ts:
            cell, h0, x_fn, hand = make_cell(name, D)
            xs = x_fn(T)
            fns, report, notes, iters = contenders(cell, h0, xs, hand, skip)
            forced = [k for k in fns if k not in ("lax.scan", "hand", "auto")]
            times, best, regret, raw, retimed = timed_regret(fns, forced, report.solver, repeats, min_time, stat)
            rec = dict(cell=name, T=T, D=D, kind="forward", structure=report.structure.describe(),
                       degree=report.degree, choice=report.solver, backward=report.plan.backward,
                       times=times, predicted={c.solver: c.time for c in report.candidates if c.applies},
                       iterations=iters, best_forced=best, regret=regret, regret_raw=raw, retimed=retimed,
                       notes=notes)
            results.append(rec)
            log(_line(rec))
            if grad:
                gfns, greport = grad_contenders(cell, h0, xs)
                gforced = [k for k in gfns if k.startswith("backward=")]
                gt, gbest, gregret, graw, gretimed = timed_regret(
                    gfns, gforced, f"backward={greport.plan.backward}", repeats, min_time, stat)
                grec = dict(cell=name, T=T, D=D, kind="gradient", structure=greport.structure.describe(),
                            degree=greport.degree, choice=greport.solver, backward=greport.plan.backward,
                            times=gt, predicted={}, iterations={}, best_forced=gbest, regret=gregret,
                            regret_raw=graw, retimed=gretimed, notes=[])
                results.append(grec)
                log(_line(grec))
    return results


def _line(r):
    ts = ", ".join(f"{k} {v * 1e3:.3g}" for k, v in r["times"].items())
    return (f"{r['cell']:>10} T={r['T']:<6} {r['kind']:<8} choice={r['choice']}/{r['backward']}  ms: {ts}  "
            f"regret {r['regret']:.2f}" + (f" (re-timed, +{r['retimed']} rounds)" if r.get("retimed") else ""))


def core_targets(T, D, repeats, min_time, stat="median"):
    """Issue 2: linear vs hand-written scan, auto vs min(sequential, linear) on h ← a ⊙ h + x."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 0.99, D), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    h0 = jnp.zeros(D, jnp.float32)

    def cell(h, x):
        return a * h + x

    @jax.jit
    def hand(h0, xs):
        A = jnp.broadcast_to(a, xs.shape)
        b = xs.at[0].add(a * h0)
        return jax.lax.associative_scan(lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1]), (A, b))[1]

    lin = autopar.parallelize(cell, solver="linear")
    seq = autopar.parallelize(cell, solver="sequential")
    auto = autopar.parallelize(cell)
    t = side_by_side({"hand": lambda: hand(h0, xs), "linear": lambda: lin(h0, xs),
                      "sequential": lambda: seq(h0, xs), "auto": lambda: auto(h0, xs),
                      "lax.scan": (lambda f=_scan_fn(cell): f(h0, xs))}, repeats=repeats, min_time=min_time,
                     stat=stat)
    return dict(T=T, D=D, times=dict(t), linear_vs_hand=t["linear"] / t["hand"],
                auto_vs_best=t["auto"] / min(t["sequential"], t["linear"]), choice=auto.explain(h0, xs).solver)


def markdown(results, core, machine, stat="median"):
    out = [f"Machine: {machine}", "", f"Statistic: {stat} over repeats, contenders interleaved in one run.", ""]
    for kind in ("forward", "gradient"):
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        names = []
        for r in rows:
            names += [k for k in r["times"] if k not in names]
        out.append(f"### {kind} (ms; side by side in one run)")
        out.append("")
        out.append("| cell | T | structure | " + " | ".join(names) + " | auto chose | auto / best forced | auto / lax.scan |")
        out.append("|---" * (len(names) + 6) + "|")
        for r in rows:
            cells = [f"{r['times'][k] * 1e3:.3g}" if k in r["times"] else "—" for k in names]
            out.append(f"| {r['cell']} | {r['T']} | {r['structure']} | " + " | ".join(cells)
                       + f" | {r['choice']} / {r['backward']} | {r['regret']:.2f} ({r['regret_raw']:.2f})"
                       + ("*" if r.get("retimed") else "") + " "
                       f"| {r['times']['auto'] / r['times']['lax.scan']:.2f} |")
        out.append("")
    out.append("auto / best forced: auto's program is the same program as the forced solver it chose; the")
    out.append("ratio uses the faster of those two timings (in parentheses: auto's own timing), so that the")
    out.append("noise between two identical programs is not counted as regret. * : auto's program lost the")
    out.append(f"first rounds, so auto, its twin and the fastest contender were timed {RETIME_FACTOR}× as many rounds again")
    out.append("and scored on all the samples.")
    out.append("")
    iters = [(r["cell"], r["T"], r["iterations"]) for r in results if r["iterations"]]
    if iters:
        out.append("### iterations per solver")
        out.append("")
        for c, T, it in iters:
            out.append(f"- {c}, T={T}: " + ", ".join(f"{k} {v}" for k, v in it.items()))
        out.append("")
    notes = sorted({f"{r['cell']}: {n}" for r in results for n in r["notes"]})
    if notes:
        out.append("### notes")
        out.append("")
        out += [f"- {n}" for n in notes]
        out.append("")
    if core:
        t = core["times"]
        out.append(f"### issue 2 targets (h ← a ⊙ h + x, T = {core['T']}, D = {core['D']})")
        out.append("")
        out.append("| " + " | ".join(t) + " |")
        out.append("|---" * len(t) + "|")
        out.append("| " + " | ".join(f"{v * 1e3:.3g} ms" for v in t.values()) + " |")
        out.append("")
        out.append(f"- linear / hand-written scan = {core['linear_vs_hand']:.2f} (target ≤ 1.15)")
        out.append(f"- auto ({core['choice']}) / min(sequential, linear) = {core['auto_vs_best']:.2f} (target ≤ 1.25)")
        out.append("")
    worst = max((r for r in results), key=lambda r: r["regret"], default=None)
    if worst:
        out.append(f"Worst auto / best forced: {worst['regret']:.2f} ({worst['cell']}, T={worst['T']}, {worst['kind']})")
    return "\n".join(out)


def plots(results, outdir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plots (pip install 'autopar[plot]')")
        return []
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = []
    for kind in ("forward", "gradient"):
        for cell in dict.fromkeys(r["cell"] for r in results if r["kind"] == kind):
            rows = [r for r in results if r["cell"] == cell and r["kind"] == kind]
            if len(rows) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            names = dict.fromkeys(k for r in rows for k in r["times"])
            for n in names:
                pts = [(r["T"], r["times"][n]) for r in rows if n in r["times"]]
                ax.loglog([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o",
                          linestyle="--" if n in ("lax.scan", "hand") else "-", label=n)
            Ts = sorted({r["T"] for r in rows})
            ax.set_xticks(Ts)
            ax.set_xticklabels([str(t) for t in Ts])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("T")
            ax.set_ylabel("time (ms)")
            ax.set_title(f"{cell} ({kind}, D={rows[0]['D']})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = outdir / f"{cell}-{kind}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            files.append(path)
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small T, few repeats (a smoke run)")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}")
    ap.add_argument("--T", default=None, help="comma-separated lengths")
    ap.add_argument("--D", type=int, default=16, help="state size (DeltaNet: d×d with d = √D)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--grad", action="store_true", help="also time forward + gradient")
    ap.add_argument("--skip", default="", help="comma-separated solvers not to force (e.g. elk,quasi-elk)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over repeats (min is steadier on a shared machine)")
    ap.add_argument("--core-T", type=int, default=None, help="T of the issue 2 targets (default 65536; quick 8192)")
    ap.add_argument("--no-core", action="store_true", help="skip the issue 2 targets")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None, help="write raw results here")
    ap.add_argument("--plots", default=None, help="write PNG plots into this folder (needs matplotlib)")
    ap.add_argument("--from-json", default=None, help="re-render table and plots from a --json file; no timing")
    args = ap.parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        md = markdown(data["results"], data.get("core"), data["machine"], args.stat)
        print(md)
        if args.out:
            Path(args.out).write_text(md + "\n")
        for f in plots(data["results"], args.plots) if args.plots else []:
            print(f"wrote {f}")
        return data["results"], data.get("core")

    Ts = tuple(int(t) for t in args.T.split(",")) if args.T else (QUICK_T if args.quick else FULL_T)
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = 0.005 if args.quick else 0.05
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in cells:
        if c not in CELLS:
            ap.error(f"unknown cell {c!r}; choose from {', '.join(CELLS)}")
    machine = machine_description()
    print(f"# autopar benchmarks — {machine}")
    skip = tuple(x.strip() for x in args.skip.split(",") if x.strip())
    results = run_suite(cells, Ts, args.D, repeats, min_time, grad=args.grad, stat=args.stat, skip=skip)
    core = None
    if not args.no_core:
        core = core_targets(args.core_T or (8192 if args.quick else 65536), 16, repeats, min_time, args.stat)
        print(f"issue 2 targets: linear/hand {core['linear_vs_hand']:.2f} (≤1.15), "
              f"auto/min(seq,linear) {core['auto_vs_best']:.2f} (≤1.25)")
    md = markdown(results, core, machine, args.stat)
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine, results=results, core=core), indent=1,
                                              default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    if args.plots:
        for f in plots(results, args.plots):
            print(f"wrote {f}")
    return results, core


if __name__ == "__main__":
    main()
