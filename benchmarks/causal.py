"""Causal convergence of Newton (DEER / quasi-DEER): how much work a shrinking active window saves.

After k iterations steps 1..k are exact and the prefix converges first: step t's update reads
only steps < t, so once steps 1..k−1 meet the tolerance, a Newton step restarted at k (from the
frozen v_{k−1}) leaves them as they are and makes step k exact. With static shapes (XLA) the
window cannot shrink step by step; the affordable form is a few static widths — the suffix
[T − W, T) with W ∈ {T, T/2, T/4, …, ``--min-width``}, each its own compiled linearise + scan +
residual — and each iteration picks the smallest W that covers every unconverged step.

For each cell this script runs, side by side in one process:

* ``full``: the library's Newton step on all T steps every iteration (what deer does);
* ``window``: the same step on the suffix window only (prefix frozen), same stopping rule.

It prints iterations, work = Σ_iterations active length (in steps; the ideal causal window,
T − first unconverged index), the work the static widths actually do, wall time of both loops
(each iteration one jitted call, so both pay the same Python overhead; compile excluded), and the
max error of both against lax.scan. Then the library's own solver, ``parallelize(solver=…,
fallback=False)`` without and with ``causal=True`` (one jitted program each; the same widths
with the default floor T/16), timed side by side (interleaved, median).

    PYTHONPATH=. python3 benchmarks/causal.py [--T 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autopar.solvers import convergence as cv  # noqa: E402
from autopar.solvers.linear import linearize_steps, newton_update  # noqa: E402
from autopar.solvers.quasi import diagonal_steps  # noqa: E402
from autopar.structure import Dense, Diagonal  # noqa: E402
import autopar  # noqa: E402
from benchmarks.common import machine_description, side_by_side  # noqa: E402
from tests.newton_cells import make  # noqa: E402


def per_step_residual(st, a, prev, V, fv):
    """max_i |v_{t,i} − f_i| / s_{t,i} per step t (the driver's measure before its max over t)."""
    scale = cv.element_scale(st, a, prev, V)
    err = jnp.abs(V - fv)
    ratio = jnp.where(err == 0, 0.0, err / jnp.maximum(scale, jnp.finfo(err.dtype).tiny))
    return jnp.where(jnp.all(jnp.isfinite(err), axis=1), jnp.max(ratio, axis=1), jnp.inf)


def solver_pieces(cell, h0, xs, proven, quasi):
    st = Diagonal(h0.shape[0]) if quasi else proven

    def lin(prev, x):
        return diagonal_steps(cell, proven, prev, x) if quasi else linearize_steps(cell, st, prev, x)

    def make_step(start):
        """A Newton step on the suffix [start, T) from the frozen v_{start−1}, then its linearisation."""

        @jax.jit
        def step(V, fv, a, rt):
            vin = h0 if start == 0 else V[start - 1]
            prev = cv.shift(vin, V[start:])
            new = newton_update(st, vin, prev, fv[start:], jax.tree_util.tree_map(lambda y: y[start:], a))
            V = V.at[start:].set(new)
            prev = cv.shift(vin, new)
            fv_w, a_w = lin(prev, jax.tree_util.tree_map(lambda y: y[start:], xs))
            rt_w = per_step_residual(st, a_w, prev, new, fv_w)
            put = lambda full, w: full.at[start:].set(w)  # noqa: E731
            return V, put(fv, fv_w), jax.tree_util.tree_map(put, a, a_w), put(rt, rt_w)

        return step

    @jax.jit
    def first(V):
        prev = cv.shift(h0, V)
        fv, a = lin(prev, xs)
        return V, fv, a, per_step_residual(st, a, prev, V, fv)

    return first, make_step


def run(first, steps, widths, T, tol, windowed, max_iters):
    s = first(jnp.zeros((T, first.dim), first.dtype))
    ideal, done_work, its = 0, 0, 0
    while its < max_iters:
        bad = np.asarray(s[3] > tol)
        if not bad.any():
            break
        active = T - int(np.argmax(bad))
        W = min(w for w in widths if w >= active) if windowed else T
        ideal += active
        done_work += W
        s = steps[W](*s)
        its += 1
    return s[0], its, ideal, done_work


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--min-width", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    T = args.T
    widths = [T]
    while widths[-1] // 2 >= args.min_width:
        widths.append(widths[-1] // 2)
    print(f"machine: {machine_description()} (shared 2-core x86_64 CPU, loaded)")
    print(f"command: python benchmarks/causal.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"T={T}, float32, window widths {widths}\n")
    print(f"{'cell':<18} {'solver':<10} {'its f/w':>8} {'work full':>10} {'ideal':>7} {'windows':>8} "
          f"{'t full ms':>10} {'t window ms':>12} {'ratio':>6} {'err full':>9} {'err win':>9} "
          f"{'lib full ms':>11} {'lib causal ms':>13} {'ratio':>6} {'its':>7}")
    cells = [("gru", 32, False), ("gru", 32, True), ("diag_gru", 64, False), ("slow_diag_gru", 64, False)]
    for name, D, quasi in cells:
        cell, h0, xs_fn = make(name.replace("slow_", ""), D, jnp.float32)
        xs = xs_fn(T)
        if name.startswith("slow_"):  # long memory: update gates near 0.03, so errors travel far
            base = cell
            cell = lambda h, x, base=base: h + 0.03 * (base(h, x) - h)  # noqa: E731
        proven = Dense(D) if name == "gru" else Diagonal(D)
        first, make_step = solver_pieces(cell, h0, xs, proven, quasi)
        first.dim, first.dtype = D, jnp.float32
        steps = {W: make_step(T - W) for W in widths}
        ref = jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]
        tol = cv.default_tol(jnp.float32)
        cap = 256 if quasi else 64
        for windowed in (False, True):  # compile every width (excluded from the timings)
            run(first, steps, widths, T, tol, windowed, cap)
        tf, tw = [], []
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            Vf, its_f, ideal, work_f = run(first, steps, widths, T, tol, False, cap)
            jax.block_until_ready(Vf)
            tf.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            Vw, its_w, _, work_w = run(first, steps, widths, T, tol, True, cap)
            jax.block_until_ready(Vw)
            tw.append(time.perf_counter() - t0)
        ef = float(jnp.max(jnp.abs(Vf - ref)))
        ew = float(jnp.max(jnp.abs(Vw - ref)))
        mf, mw = 1e3 * np.median(tf), 1e3 * np.median(tw)
        solver = "quasi-deer" if quasi else "deer"
        lib = {c: autopar.parallelize(cell, solver=solver, fallback=False, causal=c) for c in (False, True)}
        lits = [int(lib[c](h0, xs, return_info=True)[1].iterations) for c in (False, True)]
        lt = side_by_side({c: (lambda c=c: lib[c](h0, xs)) for c in (False, True)}, repeats=args.repeats + 2)
        print(f"{name + f' D={D}':<18} {solver:<10} {f'{its_f}/{its_w}':>8} {work_f:>10d} "
              f"{ideal:>7d} {work_w:>8d} {mf:>10.1f} {mw:>12.1f} {mw / mf:>6.2f} {ef:>9.1e} {ew:>9.1e} "
              f"{1e3 * lt[False]:>11.1f} {1e3 * lt[True]:>13.1f} {lt[True] / lt[False]:>6.2f} "
              f"{f'{lits[0]}/{lits[1]}':>7}", flush=True)
    print("\nwork in steps × iterations: 'work full' = its·T, 'ideal' = Σ (T − first unconverged), 'windows' ="
          " Σ the static width used; ratio = t window / t full; its f/w = iterations full / window")


if __name__ == "__main__":
    main(sys.argv[1:])
