"""autopar demo: parallelize real recurrent cells, print what autopar proves, and time it.

    python examples/demo.py                 # T = 4096, about a minute on 2 CPU cores
    python examples/demo.py --T 65536       # longer sequences
    python examples/demo.py --all-solvers   # also time quasi-DEER (and DEER on affine cells)
    python examples/demo.py --quick         # tiny sizes, one repeat (what the tests run)

For each cell it prints the ``explain()`` report as it goes, with a progress line
while it compiles and times, then one summary table: autopar's automatic choice,
the best parallel solver that applies (forced), and ``lax.scan``, all timed side
by side in this process, with the max error against lax.scan.
On a CPU a sequential scan of a cheap cell is hard to beat and the planner knows
it; on a GPU the parallel solvers win by orders of magnitude (docs/benchmarks.md).
Most of a first run's time is compilation (once per cell and solver); set
``logging.getLogger("autopar").setLevel("INFO")`` to see it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

import autopar


# ---- cells ---------------------------------------------------------------------------
def mamba_ssm(key, d=16, n=4, din=8):
    """Mamba-style selective SSM: h ← exp(Δ·A) ⊙ h + Δ·B(x) x, state (d, n), input-dependent Δ, B."""
    k1, k2, k3 = jax.random.split(key, 3)
    A = -jnp.exp(jax.random.normal(k1, (d, n)))
    Wd = jax.random.normal(k2, (din, d)) / np.sqrt(din)
    Wb = jax.random.normal(k3, (din, n)) / np.sqrt(din)
    Wx = jax.random.normal(k3, (din, d)) / np.sqrt(din)

    def cell(h, x):
        delta = jax.nn.softplus(x @ Wd)[:, None]  # (d, 1)
        B = (x @ Wb)[None, :]  # (1, n)
        u = (x @ Wx)[:, None]  # (d, 1)
        return jnp.exp(delta * A) * h + delta * B * u

    return cell, jnp.zeros((d, n)), din


def lru(key, d=32, din=8):
    """Linear Recurrent Unit: complex diagonal λ = exp(−ν + iθ), h ← λ ⊙ h + γ ⊙ (B x)."""
    k1, k2, k3 = jax.random.split(key, 3)
    nu = jnp.exp(jax.random.uniform(k1, (d,), minval=-4.0, maxval=-1.0))
    theta = jax.random.uniform(k2, (d,), maxval=2 * np.pi)
    lam = jnp.exp(-nu + 1j * theta).astype(jnp.complex64)
    gamma = jnp.sqrt(1 - jnp.abs(lam) ** 2)
    B = (jax.random.normal(k3, (din, d)) + 1j * jax.random.normal(k1, (din, d))).astype(jnp.complex64) / np.sqrt(2 * din)

    def cell(h, x):
        return lam * h + gamma * (x.astype(jnp.complex64) @ B)

    return cell, jnp.zeros((d,), jnp.complex64), din


def gru(key, d=16, din=8):
    """Full GRU (dense recurrent weights): nonlinear, dense Jacobian."""
    ks = jax.random.split(key, 6)
    W = [jax.random.normal(k, (d, d)) / np.sqrt(d) for k in ks[:3]]
    U = [jax.random.normal(k, (din, d)) / np.sqrt(din) for k in ks[3:]]

    def cell(h, x):
        z = jax.nn.sigmoid(h @ W[0] + x @ U[0])
        r = jax.nn.sigmoid(h @ W[1] + x @ U[1])
        n = jnp.tanh((r * h) @ W[2] + x @ U[2])
        return (1 - z) * h + z * n

    return cell, jnp.zeros((d,)), din


def diag_gru(key, d=64, din=8):
    """ParaRNN-style GRU with diagonal recurrences: nonlinear, diagonal Jacobian."""
    ks = jax.random.split(key, 6)
    a = [jax.random.uniform(k, (d,), minval=-1, maxval=1) for k in ks[:3]]
    U = [jax.random.normal(k, (din, d)) / np.sqrt(din) for k in ks[3:]]

    def cell(h, x):
        z = jax.nn.sigmoid(a[0] * h + x @ U[0])
        r = jax.nn.sigmoid(a[1] * h + x @ U[1])
        n = jnp.tanh(a[2] * (r * h) + x @ U[2])
        return (1 - z) * h + z * n

    return cell, jnp.zeros((d,)), din


def lstm(key, d=16, din=8):
    """LSTM with a (c, h) state and dense recurrent weights."""
    k1, k2 = jax.random.split(key)
    W = jax.random.normal(k1, (d, 4 * d)) / np.sqrt(d)
    U = jax.random.normal(k2, (din, 4 * d)) / np.sqrt(din)

    def cell(state, x):
        c, h = state
        i, f, g, o = jnp.split(h @ W + x @ U, 4)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)

    return cell, (jnp.zeros((d,)), jnp.zeros((d,))), din


def deltanet(key, dk=16, dv=16, din=8):
    """DeltaNet: matrix state S ← (I − β k kᵀ) S + β k vᵀ, k L2-normalised — J = (I − β k kᵀ) ⊗ I."""
    k1, k2, k3 = jax.random.split(key, 3)
    Wk = jax.random.normal(k1, (din, dk)) / np.sqrt(din)
    Wv = jax.random.normal(k2, (din, dv)) / np.sqrt(din)
    wb = jax.random.normal(k3, (din,)) / np.sqrt(din)

    def cell(S, x):
        k = x @ Wk
        k = k / jnp.linalg.norm(k)
        beta = jax.nn.sigmoid(x @ wb)
        return S - beta * jnp.outer(k, k @ S) + beta * jnp.outer(k, x @ Wv)

    return cell, jnp.zeros((dk, dv)), din


CELLS = {"mamba-ssm": mamba_ssm, "lru (complex)": lru, "deltanet": deltanet, "diag-gru": diag_gru, "gru": gru,
         "lstm": lstm}
#: Largest max-abs difference from lax.scan accepted (float32 states of order 1, T up to 2^16).
TOLERANCE = 1e-3
#: Forced solvers timed with --all-solvers. ELK / quasi-ELK are for unstable cells (see
#: docs/solvers.md and benchmarks/newton.py); on these contracting cells DEER is their cheaper sibling.
ALL_SOLVERS = ("linear", "deer", "quasi-deer")


def parallel_solvers(report, all_solvers: bool) -> list[str]:
    """The forced solvers to time for one cell: by default the best parallel one that applies
    (linear for an affine cell, else DEER); with --all-solvers every one of ALL_SOLVERS."""
    applies = [c.solver for c in report.candidates if c.applies and c.solver in ALL_SOLVERS]
    if all_solvers:
        # quasi-DEER keeps only diag(J): on a Householder (Kronecker) factor it needs ~100+ iterations
        return [s for s in applies if not (s == "quasi-deer" and report.structure.kind.startswith("kronecker"))]
    return applies[:1] if "linear" not in applies else ["linear"]


# ---- timing --------------------------------------------------------------------------
def timeit(fn, *args, repeats=5):
    """Median wall time of a jitted call, after one compile/warm-up call, blocking until ready."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def max_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) if x.size else 0.0 for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def progress(msg: str) -> None:
    """A progress fragment on stderr (so `demo.py > table.txt` keeps only the reports and table)."""
    print(msg, end="", file=sys.stderr, flush=True)


def fmt_ms(t: float) -> str:
    return f"{t * 1e3:.2f}ms" if t < 10 else f"{t:.1f}s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=4096, help="sequence length (default 4096)")
    ap.add_argument("--quick", action="store_true", help="T=64, one repeat (smoke test)")
    ap.add_argument("--all-solvers", action="store_true", help="time every parallel solver that applies")
    ap.add_argument("--no-explain", action="store_true", help="print only the summary table")
    args = ap.parse_args(argv)
    T, repeats = (64, 1) if args.quick else (args.T, 5)

    key = jax.random.PRNGKey(0)
    rows = []
    start = time.perf_counter()
    for i, (name, make) in enumerate(CELLS.items(), 1):
        t_cell = time.perf_counter()
        cell, h0, din = make(jax.random.fold_in(key, zlib.crc32(name.encode()) % 1000))  # not hash(): salted per process
        xs = jax.random.normal(jax.random.fold_in(key, 7), (T, din))
        fn = autopar.parallelize(cell, name=name)
        report = fn.explain(h0, xs)
        if not args.no_explain:
            print("=" * 100)
            print(f"{report}\n", flush=True)
        progress(f"[{i}/{len(CELLS)}] {name}: compiling and timing lax.scan")
        ref_fn = jax.jit(lambda h0, xs, cell=cell: jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1])
        ref = ref_fn(h0, xs)
        t_scan = timeit(ref_fn, h0, xs, repeats=repeats)
        progress(f", auto ({report.solver})")
        out, info = fn(h0, xs, return_info=True)  # one compiled program serves both calls
        t_auto = timeit(fn, h0, xs, repeats=repeats)
        forced = []
        for solver in parallel_solvers(report, args.all_solvers):
            progress(f", {solver}")
            # fallback=False: time the solver alone. With its fallback chain (deer -> elk -> sequential)
            # the program also holds ELK, which costs about 5x the compile time; a run that did not
            # converge is reported (and fails the demo) instead of falling back.
            f = autopar.parallelize(cell, solver=solver, name=name, fallback=False)
            out_f, info_f = f(h0, xs, return_info=True)
            err_f = max_err(out_f, ref) if bool(info_f.converged) else float("inf")
            forced.append((solver, timeit(f, h0, xs, repeats=repeats), err_f, int(info_f.iterations)))
        progress(f" — {time.perf_counter() - t_cell:.1f} s\n")
        rows.append((name, report, t_auto, t_scan, max_err(out, ref), forced))

    dev = jax.devices()[0]
    print("=" * 100)
    print(f"autopar vs lax.scan — T={T}, {dev.device_kind} ({jax.default_backend()}, {platform.machine()}), "
          f"median of {repeats}; demo ran {time.perf_counter() - start:.0f} s")
    width = max(len(r[1].structure.kind) for r in rows)
    hdr = (f"{'cell':<14} {'D':>4}  {'structure':<{width}}  {'auto →':<11} {'auto':>8} {'lax.scan':>8}  "
           f"{'parallel':<10} {'time':>8} {'iters':>5}  {'max err':>7}")
    print(hdr)
    print("-" * len(hdr))
    bad = []
    for name, rep, t_auto, t_scan, err, forced in rows:
        first = (f"{name:<14} {rep.layout.size:>4}  {rep.structure.kind:<{width}}  {rep.solver:<11} "
                 f"{fmt_ms(t_auto):>8} {fmt_ms(t_scan):>8}  ")
        if not forced:
            print(first + f"{'—':<10} {'':>8} {'':>5}  {err:>7.1e}")
        for j, (s, t, e, it) in enumerate(forced):
            lead = first if j == 0 else " " * len(first)
            print(lead + f"{s:<10} {fmt_ms(t):>8} {it:>5}  {max(e, err) if j == 0 else e:>7.1e}")
        bad += [f"{name}/{s} err {e:.1e}" for s, e in [("auto", err), *[(f[0], f[2]) for f in forced]] if not e <= TOLERANCE]
    print("auto: the planner's choice for this backend; parallel: the best parallel solver that applies, forced")
    print("(without its fallback chain; 'inf' = did not converge).")
    print("Errors are max |autopar − lax.scan| over the trajectory.")
    if bad:
        print("MISMATCH against lax.scan: " + ", ".join(bad))
        raise SystemExit(1)
    print(f"every result matches lax.scan (max error <= {TOLERANCE:g})")
    return rows


if __name__ == "__main__":
    main()
