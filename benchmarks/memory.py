"""Measured peak memory of a long quasi-deer solve against the planner's prediction (and lax.scan's).

    PYTHONPATH=. python3 benchmarks/memory.py --T 1000000            # dense GRU, D = 64, float32
    PYTHONPATH=. python3 benchmarks/memory.py --T 250000 --solver quasi-deer
    PYTHONPATH=. python3 benchmarks/memory.py --quick                # T = 4096, seconds

The cell is tests/newton_cells.py's dense GRU (D = 64, 3 inputs; the cell of
``benchmarks/newton.py --memory``, which only reads XLA's buffer report). Each contender runs in
its own subprocess, so each peak is its own: the child builds the weights and inputs, records
its resident set (VmRSS, the baseline), compiles the program (``jax.jit(...).lower().compile()``,
timed), reads VmHWM, runs it once (timed, blocked until ready) and reads VmHWM again
(/proc/self/status; the kernel's high-water mark of the process's resident set). The solver
child then also runs ``lax.scan`` for the max error (after its peak was read). The prediction is
the planner's ``memory`` for that solver (``fn.explain(h0, xs).plan.candidates``: what the
planner compares with ``memory_budget``), and XLA's own buffer assignment of the same compiled
program is printed beside it (``memory_analysis``: arguments + outputs + temporaries).

Refuses (exit 2, nothing run) when the prediction exceeds ``--max-gib`` (default 8 GiB: the
machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def child(solver: str, T: int, D: int) -> dict:
    import jax
    import jax.numpy as jnp

    import autopar
    from tests.newton_cells import make

    cell, h0, xs_fn = make("gru", D, jnp.float32)
    xs = jax.block_until_ready(xs_fn(T))
    out = {"solver": solver, "T": T, "D": D}
    if solver == "scan":
        prog = jax.jit(lambda h, x: jax.lax.scan(lambda c, u: (cell(c, u),) * 2, h, x)[1])
    else:
        fn = autopar.parallelize(cell, solver=solver, fallback=False)
        rows = {c.solver: c for c in fn.explain(h0, xs).plan.candidates}
        out["predicted_bytes"] = float(rows[solver].memory)
        out["predicted_iters"] = float(rows[solver].iterations)
        out["predicted_s"] = float(rows[solver].time)
        prog = jax.jit(lambda h, x: fn(h, x, return_info=True))
    out["baseline_rss"] = _status("VmRSS")
    t0 = time.perf_counter()
    compiled = prog.lower(h0, xs).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["hwm_after_compile"] = _status("VmHWM")
    ma = compiled.memory_analysis()
    if ma is not None:
        out["xla_bytes"] = float(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)
        out["xla_temp_bytes"] = float(ma.temp_size_in_bytes)
    t0 = time.perf_counter()
    res = jax.block_until_ready(compiled(h0, xs))
    out["run_s"] = time.perf_counter() - t0
    out["hwm"] = _status("VmHWM")
    if solver != "scan":
        hs, info = res
        out.update(iterations=int(info.iterations), converged=bool(info.converged), residual=float(info.residual))
        del compiled, res
        ref = jax.jit(lambda h, x: jax.lax.scan(lambda c, u: (cell(c, u),) * 2, h, x)[1])(h0, xs)
        out["max_err"] = float(jnp.max(jnp.abs(hs - ref)))
    return out


def run_child(solver, T, D, timeout):
    cmd = [sys.executable, __file__, "--child", solver, "--T", str(T), "--D", str(D)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{solver} child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def predict(solver, T, D):
    import jax.numpy as jnp

    import autopar
    from tests.newton_cells import make

    cell, h0, _ = make("gru", D, jnp.float32)
    xs = jnp.zeros((T, 3), jnp.float32)  # explain needs arrays; values do not matter to the plan
    fn = autopar.parallelize(cell, solver=solver, fallback=False)
    rows = {c.solver: c for c in fn.explain(h0, xs).plan.candidates}
    return rows[solver]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=10**6)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--solver", default="quasi-deer")
    ap.add_argument("--max-gib", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="per child, seconds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.T, a.D)))
        return 0
    T = 4096 if a.quick else a.T
    GiB = 2**30
    row = predict(a.solver, T, a.D)
    pred = row.memory
    print(f"dense GRU, T={T}, D={a.D}, float32, solver={a.solver}: predicted memory {pred / GiB:.3f} GiB, "
          f"{row.iterations:.0f} iterations, {row.time:.1f} s")
    if pred > a.max_gib * GiB:
        print(f"refusing: predicted {pred / GiB:.2f} GiB > --max-gib {a.max_gib}")
        return 2
    rows = [run_child(s, T, a.D, a.timeout) for s in ("scan", a.solver)]
    print(f"{'program':<11} {'pred GiB':>8} {'XLA GiB':>8} {'peak RSS':>9} {'Δ RSS':>8} {'compile':>8} {'run':>8} "
          f"{'iters':>5} {'conv':>5} {'max err':>9}")
    for r in rows:
        delta = r["hwm"] - r["baseline_rss"]
        print(f"{r['solver']:<11} {r.get('predicted_bytes', float('nan')) / GiB:>8.3f} "
              f"{r.get('xla_bytes', float('nan')) / GiB:>8.3f} {r['hwm'] / GiB:>8.3f}G {delta / GiB:>7.3f}G "
              f"{r['compile_s']:>7.1f}s {r['run_s']:>7.1f}s {r.get('iterations', ''):>5} "
              f"{str(r.get('converged', '')):>5} {r.get('max_err', float('nan')):>9.2e}")
    print("peak RSS: the child's VmHWM (whole process: Python, JAX, the compiler, inputs);"
          " Δ RSS: VmHWM − VmRSS before compiling (what the program itself added).")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
