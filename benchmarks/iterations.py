"""Newton iteration counts of autopar's forced solvers on the peers' cells, beside the published numbers.

    PYTHONPATH=. python3 benchmarks/iterations.py --quick          # seconds; checks the script runs
    PYTHONPATH=. python3 benchmarks/iterations.py                  # T = 4096 grid
    PYTHONPATH=. python3 benchmarks/iterations.py --T 65536 --solvers deer,quasi-deer,quasi-elk

Cells (benchmarks/flax_cells.py): flax ``GRUCell(features=nh)`` for nh = 8, 32, 64 and a tanh
RNN (flax ``SimpleCell(features=32)``), flax default initialisation, h0 = 0, standard-normal
inputs of width nh, float32, seed 0 — the construction of the DEER and ELK speed benchmarks.

Each row is ``autopar.parallelize(cell, solver=s, fallback=False, tol=tol)`` called once with
``return_info=True``: ``info.iterations``, ``info.converged``, ``info.residual`` and the max
absolute error of the states against ``lax.scan``. ``--tols`` lists the tolerances: ``default``
(autopar's: per-element residual ≤ 32·eps·(1 + max|h|), ≈ 3.8e-6 relative, for float32) and
``1e-4`` (the number the peers use for float32, though on a different quantity: the ELK repo
stops when max|h^(i+1) − h^(i)| < 1e-4, machine-discovery/deer when every
|h^(i+1) − h^(i)| ≤ 1e-4 + 1e-3·|h^(i+1)|; both are step sizes, autopar's is the residual).
"wall" is the first call, compile included — indicative only.

Published numbers (as quoted in issue 14): ELK blog, GRU at T = 65536: DEER 6 iterations,
quasi-DEER 30; ParaRNN: a fixed 3 Newton iterations (its convergence check is commented out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import autopar  # noqa: E402
from benchmarks.flax_cells import make, scan_states  # noqa: E402

SOLVERS = ("deer", "quasi-deer", "elk", "quasi-elk")
CELLS = (("gru", 8), ("gru", 32), ("gru", 64), ("tanh", 32))


def run(cells, Ts, solvers, tols):
    print(f"{'cell':<5} {'nh':>3} {'T':>6} {'solver':<10} {'tol':>8} {'iters':>5} {'conv':>5} "
          f"{'residual':>9} {'max err':>9} {'wall':>7}")
    for kind, nh in cells:
        for T in Ts:
            cell, h0, xs, params, apply = make(kind, nh, T)
            ref = jax.jit(scan_states, static_argnums=0)(apply, params, h0, xs)
            for s in solvers:
                for tol in tols:
                    fn = autopar.parallelize(cell, solver=s, fallback=False,
                                             tol=None if tol == "default" else float(tol))
                    t0 = time.perf_counter()
                    hs, info = fn(h0, xs, return_info=True)
                    jax.block_until_ready(hs)
                    wall = time.perf_counter() - t0
                    err = float(jnp.max(jnp.abs(hs - ref)))
                    print(f"{kind:<5} {nh:>3} {T:>6} {s:<10} {tol:>8} {int(info.iterations):>5} "
                          f"{str(bool(info.converged)):>5} {float(info.residual):>9.2e} {err:>9.2e} "
                          f"{wall:>6.1f}s", flush=True)
                    del hs, info, fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--T", default="4096", help="comma-separated sequence lengths")
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--tols", default="default,1e-4")
    ap.add_argument("--cells", default=",".join(f"{k}{n}" for k, n in CELLS), help="e.g. gru8,gru32,tanh32")
    a = ap.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} cores")
    cells = [(c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")):])) for c in a.cells.split(",")]
    if a.quick:
        run([("gru", 8), ("tanh", 8)], [256], ("deer", "quasi-deer"), ("default",))
        return
    run(cells, [int(t) for t in a.T.split(",")], tuple(a.solvers.split(",")), tuple(a.tols.split(",")))


if __name__ == "__main__":
    main()
