"""Backward time and peak memory of autopar's implicit adjoint vs lax.scan's reverse mode.

For a diagonal cell (diagonal GRU) and a dense cell (tanh RNN), at T = 2^12 … 2^16, times
``jax.value_and_grad`` of a loss of the trajectory w.r.t. the parameters (forward + backward)
and the forward alone (backward ≈ the difference), for:

* ``scan``           — jax.lax.scan differentiated by JAX (stores every step's residuals);
* ``ap-linear``      — autopar, implicit adjoint by a reverse associative scan (transposed J);
* ``ap-sequential``  — autopar, implicit adjoint by a reverse lax.scan of per-step VJPs.

The forward solver is the planner's choice (``solver="auto"``, or ``--solver``). Memory is
XLA's static buffer assignment for the compiled gradient program,
``jax.jit(f).lower(...).compile().memory_analysis()``: ``temp_size_in_bytes`` (scratch, where
the residuals live) and ``peak_memory_in_bytes`` (JAX ≥ 0.4.3x; NaN when the backend leaves it
0). Every timing blocks until ready; the median of ``--reps`` runs after one warm-up.

With ``--forward`` it times forward mode instead: ``jax.jvp`` of the trajectory along a tangent
of the parameters and the inputs (the tangent solve of ``autopar.adjoint``) against lax.scan's
jvp, beside ``value_and_grad`` (reverse mode) of the same sizes.

    PYTHONPATH=. python3 benchmarks/gradients.py --quick        # seconds, small sizes
    PYTHONPATH=. python3 benchmarks/gradients.py                # T = 2^12 … 2^16 (minutes)
    PYTHONPATH=. python3 benchmarks/gradients.py --forward --T 4096 65536
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import autopar


def diag_gru(p, h, u):
    z = jax.nn.sigmoid(u[0] + p["a_z"] * h)
    r = jax.nn.sigmoid(u[1] + p["a_r"] * h)
    return (1.0 - z) * h + z * jnp.tanh(u[2] + r * (p["a"] * h))


def dense_rnn(p, h, u):
    return jnp.tanh(p["W"] @ h + u[0])


def setup(kind, T, D, key=jax.random.PRNGKey(0)):
    k = jax.random.split(key, 4)
    if kind == "diagonal":
        p = {"a_z": jax.random.normal(k[0], (D,)), "a_r": jax.random.normal(k[1], (D,)),
             "a": jax.random.uniform(k[2], (D,), minval=-1, maxval=1)}
        return diag_gru, p, jax.random.normal(k[3], (T, 3, D))
    p = {"W": jax.random.normal(k[0], (D, D)) * (0.9 / np.sqrt(D))}
    return dense_rnn, p, jax.random.normal(k[3], (T, 1, D))


def loss_of(mode, cell, solver):
    def run(p, us):
        c = functools.partial(cell, p)
        h0 = jnp.zeros(us.shape[-1], us.dtype)
        if mode == "scan":
            hs = jax.lax.scan(lambda h, u: (c(h, u),) * 2, h0, us)[1]
        else:
            hs = autopar.parallelize(c, solver=solver, backward=mode.split("-")[1])(h0, us)
        return jnp.mean(hs**2)

    return run


def timeit(f, args, reps):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def memory(f, args):
    m = jax.jit(f).lower(*args).compile().memory_analysis()
    if m is None:
        return float("nan"), float("nan")
    peak = getattr(m, "peak_memory_in_bytes", 0) or float("nan")
    return float(m.temp_size_in_bytes), float(peak)


def bench(kind, T, D, mode, solver, reps):
    cell, p, us = setup(kind, T, D)
    loss = loss_of(mode, cell, solver)
    fwd = jax.jit(loss)
    vg = jax.jit(jax.value_and_grad(loss))
    t_fwd = timeit(fwd, (p, us), reps)
    t_vg = timeit(vg, (p, us), reps)
    temp, peak = memory(jax.value_and_grad(loss), (p, us))
    # check the gradient against lax.scan's (same program family, so this is cheap)
    g_ref = jax.jit(jax.grad(loss_of("scan", cell, solver)))(p, us)
    g = vg(p, us)[1]
    err = max(float(jnp.max(jnp.abs(a - b)) / (1e-30 + jnp.max(jnp.abs(b))))
              for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)))
    fwd_solver = "lax.scan" if mode == "scan" else autopar.parallelize(
        functools.partial(cell, p), solver=solver).explain(jnp.zeros(D), us).plan.solver
    return dict(cell=kind, T=T, D=D, mode=mode, forward=fwd_solver, fwd_s=t_fwd, fwd_bwd_s=t_vg,
                bwd_s=max(t_vg - t_fwd, 0.0), temp_MiB=temp / 2**20, peak_MiB=peak / 2**20, grad_rel_err=err)


def traj_of(mode, cell, solver):
    def run(p, us):
        c = functools.partial(cell, p)
        h0 = jnp.zeros(us.shape[-1], us.dtype)
        if mode == "scan":
            return jax.lax.scan(lambda h, u: (c(h, u),) * 2, h0, us)[1]
        return autopar.parallelize(c, solver=solver, backward=mode.split("-")[1])(h0, us)

    return run


def bench_forward(kind, T, D, mode, solver, reps):
    """Forward mode: jit(jvp) of the trajectory w.r.t. (params, inputs); reverse: value_and_grad."""
    cell, p, us = setup(kind, T, D)
    traj = traj_of(mode, cell, solver)
    tp = jax.tree_util.tree_map(lambda a: 0.1 * jnp.ones_like(a), p)
    tu = 0.1 * jnp.ones_like(us)
    fwd = jax.jit(traj)
    jvp = jax.jit(lambda p, us, tp, tu: jax.jvp(traj, (p, us), (tp, tu)))
    vg = jax.jit(jax.value_and_grad(loss_of(mode, cell, solver)))
    t_fwd = timeit(fwd, (p, us), reps)
    t_jvp = timeit(jvp, (p, us, tp, tu), reps)
    t_vg = timeit(vg, (p, us), reps)
    temp_jvp, _ = memory(lambda p, us, tp, tu: jax.jvp(traj, (p, us), (tp, tu)), (p, us, tp, tu))
    ref = jax.jit(lambda p, us, tp, tu: jax.jvp(traj_of("scan", cell, solver), (p, us), (tp, tu)))(p, us, tp, tu)[1]
    got = jvp(p, us, tp, tu)[1]
    err = float(jnp.max(jnp.abs(got - ref)) / (1e-30 + jnp.max(jnp.abs(ref))))
    fwd_solver = "lax.scan" if mode == "scan" else autopar.parallelize(
        functools.partial(cell, p), solver=solver).explain(jnp.zeros(D), us).plan.solver
    return dict(cell=kind, T=T, D=D, mode=mode, forward=fwd_solver, fwd_s=t_fwd, jvp_s=t_jvp, fwd_bwd_s=t_vg,
                jvp_temp_MiB=temp_jvp / 2**20, tangent_rel_err=err)


def main_forward(args):
    Ts = args.T or ([2**8, 2**10] if args.quick else [2**12, 2**16])
    D = args.D or (8 if args.quick else 16)
    reps = args.reps or (1 if args.quick else 5)
    print(f"backend={jax.default_backend()} devices={jax.devices()} D={D} reps={reps} x64={jax.config.jax_enable_x64}")
    print(f"{'cell':9} {'T':>6} {'mode':14} {'forward':10} {'fwd ms':>9} {'jvp ms':>9} {'fwd+bwd ms':>11} "
          f"{'jvp temp MiB':>12} {'tangent err':>11}")
    rows = []
    for kind in ("diagonal", "dense"):
        for T in Ts:
            for mode in ("scan", "ap-linear", "ap-sequential"):
                r = bench_forward(kind, T, D, mode, args.solver, reps)
                rows.append(r)
                print(f"{kind:9} {T:6d} {mode:14} {r['forward']:10} {1e3 * r['fwd_s']:9.2f} {1e3 * r['jvp_s']:9.2f} "
                      f"{1e3 * r['fwd_bwd_s']:11.2f} {r['jvp_temp_MiB']:12.3f} {r['tangent_rel_err']:11.1e}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one rep: checks the script runs")
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--D", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--json", default=None, help="write rows to this file")
    ap.add_argument("--forward", action="store_true", help="forward mode (jax.jvp) beside reverse mode")
    ap.add_argument("--T", type=int, nargs="*", default=None, help="sequence lengths (default by mode)")
    args = ap.parse_args(argv)
    if args.forward:
        rows = main_forward(args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return rows
    Ts = args.T or ([2**8, 2**10] if args.quick else [2**k for k in range(12, 17)])
    D = args.D or (8 if args.quick else 16)
    reps = args.reps or (1 if args.quick else 5)
    print(f"backend={jax.default_backend()} devices={jax.devices()} D={D} reps={reps} x64={jax.config.jax_enable_x64}")
    hdr = f"{'cell':9} {'T':>6} {'mode':14} {'forward':10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'bwd ms':>9} {'temp MiB':>9} {'peak MiB':>9} {'grad err':>9}"
    print(hdr)
    rows = []
    for kind in ("diagonal", "dense"):
        for T in Ts:
            for mode in ("scan", "ap-linear", "ap-sequential"):
                r = bench(kind, T, D, mode, args.solver, reps)
                rows.append(r)
                print(f"{kind:9} {T:6d} {mode:14} {r['forward']:10} {1e3 * r['fwd_s']:9.2f} {1e3 * r['fwd_bwd_s']:11.2f} "
                      f"{1e3 * r['bwd_s']:9.2f} {r['temp_MiB']:9.3f} {r['peak_MiB']:9.3f} {r['grad_rel_err']:9.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
