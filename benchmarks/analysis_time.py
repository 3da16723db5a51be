"""Analysis time per cell (trace excluded; no XLA compilation happens in the analysis).

    PYTHONPATH=. python3 benchmarks/analysis_time.py [--quick]

Cells: small classics, a deep elementwise chain (~500 equations), a stacked cell with
many matmuls, a 64×64 matrix state (D = 4096) with a row-wise and an elementwise update.
Prints the median over repeats of ``autopar.passes.analyse(rec)`` per cell, per pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autopar.passes import PassManager  # noqa: E402
from autopar.trace import trace_cell  # noqa: E402


def cells(quick: bool):
    rng = np.random.default_rng(0)
    n = 16
    W = jnp.asarray(rng.normal(size=(n, n)))
    w = jnp.asarray(rng.normal(size=(n,)))

    def diag_gru(h, x):
        z = jax.nn.sigmoid(w * h + x)
        return (1 - z) * h + z * jnp.tanh(w * h - x)

    def gru(h, x):
        z = jax.nn.sigmoid(W @ h + x)
        return (1 - z) * h + z * jnp.tanh(W @ h - x)

    def deep_chain(h, x):  # ~500 equations
        v = h
        for i in range(125):
            v = jnp.tanh(v * w + x) + 0.1 * h
        return v

    def stacked(h, x):
        hs = h.reshape(8, n)
        outs, prev = [], x
        for k in range(8):
            prev = jnp.tanh(W @ hs[k] + prev)
            outs.append(prev)
        return jnp.concatenate(outs)

    S0 = jnp.zeros((64, 64), jnp.float32)
    A = jnp.asarray(rng.normal(size=(64, 64)) / 8, jnp.float32)

    def matrix_rows(S, x):  # S @ A: rows independent -> 64 blocks of 64
        return S @ A + x

    def matrix_elementwise(S, x):
        return jnp.tanh(S * 0.9 + x)

    out = [
        ("diag_gru D=16", diag_gru, jnp.zeros(n), jnp.ones((4, n))),
        ("gru D=16", gru, jnp.zeros(n), jnp.ones((4, n))),
        ("deep_chain D=16", deep_chain, jnp.zeros(n), jnp.ones((4, n))),
        ("stacked 8 layers D=128", stacked, jnp.zeros(8 * n), jnp.ones((4, n))),
        ("matrix elementwise D=4096", matrix_elementwise, S0, jnp.ones((2, 64, 64), jnp.float32)),
    ]
    if not quick:
        out.append(("matrix S@A D=4096", matrix_rows, S0, jnp.ones((2, 64, 64), jnp.float32)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip the slowest cell")
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else 7
    pm = PassManager.default()
    rows = []
    for name, cell, h0, xs in cells(args.quick):
        rec = trace_cell(cell, h0, xs)
        n_eqns = len(rec.step_jaxpr.jaxpr.eqns)
        pm.run(rec)  # warm imports
        times, per_pass = [], {}
        for _ in range(repeats):
            t0 = time.perf_counter()
            facts = {}
            from autopar.passes import Facts

            facts = Facts()
            for p in pm.ordered():
                t = time.perf_counter()
                facts.update(p.run(rec, facts) or {})
                per_pass.setdefault(p.name, []).append(time.perf_counter() - t)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        slow = sorted(((statistics.median(v), k) for k, v in per_pass.items()), reverse=True)[:3]
        rows.append((name, n_eqns, med, facts["structure"].describe(), slow))
        print(f"{name:<28} eqns={n_eqns:<5} analysis={med * 1e3:8.1f} ms  {facts['structure'].describe():<40} "
              + "  ".join(f"{k}={t * 1e3:.1f}ms" for t, k in slow), flush=True)
    return rows


if __name__ == "__main__":
    main()
