"""First-call latency: trace + analysis + compile (+ the first run) of ``parallelize`` vs ``lax.scan``.

A GRU with D = 64 hidden units, T = 4096, float32 (closed-over weights). Every contender runs in a
fresh Python process (nothing cached by an earlier one: JAX's caches are per process), timed
after imports and input creation:

* ``lax.scan``: ``jax.jit`` of the scan, first call (trace + compile + run), then a second call;
* ``parallelize(solver=…)``: ``explain()`` first (trace + analysis + plan: what a first call pays
  before XLA), then the first call (build + compile + run), then a second call (run only).

"first call" is the sum a user waits for on their first ``fn(h0, xs)``; the ratio is against
lax.scan's first call. An eager call of a Newton solver compiles its planned stage alone and
its fallback chain (deer → elk → sequential) only if that stage fails (``Parallelized._lazy_chain``);
``nofallback`` rows pass ``fallback=False``; ``chain`` rows force the whole chain to be compiled
(the behaviour before lazy chains, and still the one under jit).

    PYTHONPATH=. python3 benchmarks/latency.py [--T 4096] [--D 64] [--only auto,deer]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
import autopar
T, D, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
k = jax.random.split(jax.random.PRNGKey(0), 7)
Wz, Wr, Wn = (jax.random.normal(k[i], (D, D)) / np.sqrt(D) for i in range(3))
Uz, Ur, Un = (jax.random.normal(k[3 + i], (3, D)) for i in range(3))
xs = jax.random.normal(k[6], (T, 3))
h0 = jnp.zeros(D)
jax.block_until_ready((Wz, xs))

def cell(h, x):
    z = jax.nn.sigmoid(h @ Wz + x @ Uz)
    r = jax.nn.sigmoid(h @ Wr + x @ Ur)
    n = jnp.tanh((r * h) @ Wn + x @ Un)
    return (1 - z) * h + z * n

out = {}
if which == "lax.scan":
    f = jax.jit(lambda h0, xs: jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1])
    t0 = time.perf_counter(); jax.block_until_ready(f(h0, xs)); out["first"] = time.perf_counter() - t0
    t0 = time.perf_counter(); jax.block_until_ready(f(h0, xs)); out["second"] = time.perf_counter() - t0
else:
    solver, _, extra = which.partition(" ")
    opts = dict(fallback=False) if extra == "nofallback" else {}
    fn = autopar.parallelize(cell, solver=solver, **opts)
    if extra == "chain":
        fn._lazy_chain = lambda *a: False  # the one-program chain
    t0 = time.perf_counter(); rep = fn.explain(h0, xs); out["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter(); jax.block_until_ready(fn(h0, xs)); out["compile_run"] = time.perf_counter() - t0
    out["first"] = out["analysis"] + out["compile_run"]
    t0 = time.perf_counter(); jax.block_until_ready(fn(h0, xs)); out["second"] = time.perf_counter() - t0
    _, info = fn(h0, xs, return_info=True)  # untimed: return_info compiles a residual check of its own
    out["plan"] = rep.plan.solver if hasattr(rep, "plan") else solver
    out["used"] = info.solver
    out["iterations"] = int(info.iterations)
print("RESULT" + json.dumps(out))
"""


def run_child(which, T, D):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", CHILD, str(T), str(D), which], capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{which}: {p.stderr[-2000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated contenders (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of fresh processes, interleaved; medians")
    args = ap.parse_args(argv)
    names = ["lax.scan", "auto", "sequential", "deer", "deer chain", "quasi-deer", "quasi-deer chain", "elk",
             "elk chain", "quasi-elk", "quasi-elk chain"]
    if args.only:
        names = ["lax.scan"] + [n for n in args.only.split(",") if n != "lax.scan"]
    sys.path.insert(0, ROOT)
    from benchmarks.common import machine_description

    print(f"machine: {machine_description()} (shared 2-core x86_64 CPU, loaded)")
    print(f"command: python benchmarks/latency.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"GRU D={args.D}, T={args.T}, float32; seconds; each row a fresh process\n")
    print(f"medians over {args.rounds} interleaved rounds\n")
    print(f"{'contender':<30} {'analysis':>9} {'compile+run':>12} {'first call':>11} {'× scan':>7} {'2nd call':>9} "
          f"{'used (its)':>18}")
    runs = {n: [] for n in names}
    for _ in range(args.rounds - 1):
        for n in names:
            runs[n].append(run_child(n, args.T, args.D))
    med = lambda n, k: statistics.median(r.get(k, float("nan")) for r in runs[n])  # noqa: E731
    for n in names:  # the last round prints as it goes
        runs[n].append(run_child(n, args.T, args.D))
        base = med("lax.scan", "first")
        r = runs[n][-1]
        used = "" if n == "lax.scan" else f"{r['used']} ({r['iterations']})"
        label = n if n == "lax.scan" else f"parallelize {n}"
        print(f"{label:<30} {med(n, 'analysis'):9.2f} {med(n, 'compile_run'):12.2f} {med(n, 'first'):11.2f} "
              f"{med(n, 'first') / base:7.2f} {med(n, 'second'):9.3f} {used:>18}", flush=True)

if __name__ == "__main__":
    main(sys.argv[1:])
