"""Newton family benchmark: iterations to tolerance, time per iteration and total vs lax.scan.

    PYTHONPATH=. python3 benchmarks/newton.py --quick     # seconds; checks the script runs
    PYTHONPATH=. python3 benchmarks/newton.py             # full grid (run on a quiet machine)
    PYTHONPATH=. python3 benchmarks/newton.py --memory    # peak-memory check, T = 1e6, D = 64

Cells: GRU (dense, D = 8, 32, 64), ParaRNN-style diagonal GRU (D = 64, 256), LSTM
(dense, (c, h) state); T = 2^12 … 2^16; float32. All times are medians of
``--repeats`` runs after one warm-up (compile) call, with ``block_until_ready``.
"time/iter" is total / iterations (so it includes the final convergence check).

The memory check compiles quasi-deer and quasi-elk on a dense GRU with T = 10^6,
D = 64 (float32) and reads XLA's own buffer assignment (``memory_analysis``):
the temporary bytes must stay far below one T·D² float32 array (16 GiB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import autopar  # noqa: E402
from tests.newton_cells import make  # noqa: E402

SOLVERS = ("deer", "quasi-deer", "elk", "quasi-elk")


def _time(fn, *args, repeats=3):
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def bench(cells, Ts, solvers, repeats):
    print(f"backend: {jax.default_backend()}  devices: {jax.devices()}")
    print(f"{'cell':<14} {'D':>4} {'T':>7} {'solver':<11} {'iters':>5} {'conv':>5} {'used':<11} "
          f"{'total':>10} {'t/iter':>10} {'scan':>10} {'ratio':>7}")
    for name, D in cells:
        for T in Ts:
            cell, h0, xs_fn = make(name, D, jnp.float32)
            xs = xs_fn(T)
            scan = jax.jit(lambda h, x: jax.lax.scan(lambda c, xx: (cell(c, xx),) * 2, h, x)[1])
            t_scan, _ = _time(scan, h0, xs, repeats=repeats)
            for s in solvers:
                fn = autopar.parallelize(cell, solver=s)
                t, _ = _time(fn, h0, xs, repeats=repeats)  # timed without return_info: Info.residual
                _, info = fn(h0, xs, return_info=True)     # costs one more linearisation
                it = int(info.iterations)
                print(f"{name:<14} {D:>4} {T:>7} {s:<11} {it:>5} {str(bool(info.converged)):>5} {info.solver:<11} "
                      f"{t * 1e3:>8.2f}ms {t / max(it, 1) * 1e3:>8.2f}ms {t_scan * 1e3:>8.2f}ms {t / t_scan:>7.2f}")
                sys.stdout.flush()


def memory(T: int, D: int):
    """Compile (not run) the quasi solvers at size T and report XLA's buffer sizes."""
    cell, h0, xs_fn = make("gru", D, jnp.float32)
    xs = jax.ShapeDtypeStruct((T, 3), jnp.float32)
    h0s = jax.ShapeDtypeStruct((D,), jnp.float32)
    td2 = T * D * D * 4
    print(f"memory check: dense GRU, T={T}, D={D}, float32; one T·D² array would be {td2 / 2**30:.2f} GiB")
    for s in ("quasi-deer", "quasi-elk"):
        fn = autopar.parallelize(cell, solver=s)
        t0 = time.perf_counter()
        compiled = jax.jit(lambda h, x: fn(h, x)).lower(h0s, xs).compile()
        ma = compiled.memory_analysis()
        tmp = getattr(ma, "temp_size_in_bytes", float("nan"))
        args = getattr(ma, "argument_size_in_bytes", float("nan"))
        out = getattr(ma, "output_size_in_bytes", float("nan"))
        peak = tmp + args + out
        print(f"  {s:<11} temp {tmp / 2**20:10.1f} MiB  args {args / 2**20:8.1f} MiB  out {out / 2**20:8.1f} MiB  "
              f"peak≈{peak / 2**20:10.1f} MiB = {peak / (T * D * 4):.1f} × T·D floats, {peak / td2:.3f} × T·D²  "
              f"(compile {time.perf_counter() - t0:.1f}s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs")
    ap.add_argument("--memory", action="store_true", help="peak-memory check (compile only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    a = ap.parse_args(argv)
    solvers = tuple(a.solvers.split(","))
    if a.memory:
        memory(10**4 if a.quick else 10**6, 64)
        return
    if a.quick:
        bench([("gru", 8), ("diag_gru", 64)], [2**10], solvers, 1)
        memory(2**12, 64)
        return
    cells = [("gru", 8), ("gru", 32), ("gru", 64), ("diag_gru", 64), ("diag_gru", 256), ("lstm", 32)]
    bench(cells, [2**12, 2**14, 2**16], solvers, a.repeats)


if __name__ == "__main__":
    main()
