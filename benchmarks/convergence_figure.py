"""Residual vs iteration for each Newton-family solver on a contracting and a chaotic cell.

    PYTHONPATH=. python3 benchmarks/convergence_figure.py [--out docs/convergence.png] [--T 1000]

Uses ``Info.history`` (the per-iteration residual the solvers record) with fallback
disabled, so each curve is the solver's own. Prints the histories; draws them with
matplotlib when it is installed.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import autopar  # noqa: E402
from tests.newton_cells import make  # noqa: E402

SOLVERS = ("deer", "quasi-deer", "elk", "quasi-elk")


def histories(name, D, T):
    cell, h0, xs_fn = make(name, D, jnp.float64)
    xs = xs_fn(T)
    out = {}
    for s in SOLVERS:
        _, info = autopar.parallelize(cell, solver=s, fallback=False, max_iters=60)(h0, xs, return_info=True)
        h = np.asarray(info.history, np.float64)
        out[s] = h[~np.isnan(h)]
        print(f"{name:<9} {s:<11} converged={bool(info.converged)!s:<5} iters={int(info.iterations):>3} "
              f"history={np.array2string(out[s][:12], precision=2)}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/convergence.png")
    ap.add_argument("--T", type=int, default=1000)
    a = ap.parse_args(argv)
    panels = [("GRU (D=16, contracting)", histories("gru", 16, a.T)),
              ("logistic map r=3.9 (chaotic)", histories("logistic", 1, min(a.T, 200)))]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no figure drawn")
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (title, hs) in zip(axes, panels):
        for s, h in hs.items():
            h = np.where(np.isfinite(h), h, np.nan)
            ax.semilogy(np.arange(len(h)), np.maximum(h, 1e-17), marker=".", label=s)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("max_t |v_t - f(v_{t-1})| / (1 + max|v|)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes)")


if __name__ == "__main__":
    main()
