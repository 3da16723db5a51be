"""Time-sharded solves vs one device: wall time and bytes the collectives move.

On P host devices (``--devices``, default 8, via ``XLA_FLAGS=--xla_force_host_platform_device_count``
set before JAX starts), for a diagonal linear SSM (solver ``linear``) and a diagonal tanh RNN
(solver ``deer``) at several T, times

* ``one``      — ``autopar.parallelize(cell, solver=...)(h0, xs)`` on one device;
* ``sharded``  — the same call with ``xs`` sharded along time over the P devices (entry point 1);
* ``scan``     — ``jax.lax.scan`` on one device (the oracle, and the CPU's usual winner);

and reads the bytes the sharded program's collectives move from its compiled HLO
(``jax.jit(...).lower(...).compile().as_text()``: every all-gather / collective-permute /
all-reduce, its output size × dtype size, summed per call — for deer, per Newton iteration
body plus the fixed part, as compiled; multiply the loop's by the iterations run). The point
it makes: those bytes do not grow with T. On a CPU the P "devices" share the machine's cores,
so wall-time speed-ups need real devices; the ratio here shows the overhead of the two-level form.

    PYTHONPATH=. python3 benchmarks/sharding.py --quick
    PYTHONPATH=. python3 benchmarks/sharding.py --T 65536 262144 1048576
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # before JAX starts
    _n = "8"
    if "--devices" in sys.argv:
        _n = sys.argv[sys.argv.index("--devices") + 1]
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}").strip()

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import autopar

try:
    from benchmarks.common import machine_description, time_fn
except ImportError:  # run as a script from benchmarks/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import machine_description, time_fn

_BYTES = {"f32": 4, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "bf16": 2, "f16": 2, "c64": 8, "c128": 16}
_COLL = r"(all-gather|collective-permute|all-reduce|all-to-all)"


def collective_bytes(hlo: str) -> tuple[int, int]:
    """(bytes, number of collectives) over every collective op in a compiled HLO text: the sizes
    of each op's result (``%x = f32[8,16]{1,0} all-gather(...)``; tuples summed)."""
    total = count = 0
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s" + _COLL + r"(-start)?\(", line)
        if not m:
            continue
        for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
            total += int(np.prod([int(d) for d in dims.split(",") if d] or [1])) * _BYTES.get(dt, 4)
        count += 1
    return total, count


def cells(D, seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.uniform(0.5, 0.99, D), jnp.float32)
    c = jnp.asarray(rng.uniform(0.3, 0.7, D), jnp.float32)  # contracting: deer converges in a few steps
    return {
        "diag-ssm (linear)": (lambda h, x: a * h + x, "linear"),
        "tanh-diag (deer)": (lambda h, x: jnp.tanh(c * h + x), "deer"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="*", default=[2 ** 14, 2 ** 16, 2 ** 18])
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cells", nargs="*", default=None, help="a subset of the cells (names as printed)")
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="deer's tolerance (the float32 default 32·eps is not met at T ≥ 2^14 on this cell)")
    args = ap.parse_args()
    Ts = [2 ** 10, 2 ** 12] if args.quick else args.T
    Pn = args.devices
    mesh = Mesh(np.array(jax.devices()[:Pn]), ("t",))
    print(f"machine: {machine_description()}; {len(jax.devices())} host devices, P = {Pn}, D = {args.D}")
    print(f"{'cell':<20} {'T':>8} {'scan':>10} {'one':>10} {'sharded':>10} {'sh/one':>7} "
          f"{'coll. bytes':>12} {'#coll':>6} {'T·D bytes':>11} {'iters':>5}")
    for name, (cell, solver) in cells(args.D).items():
        if args.cells and not any(name.startswith(c) for c in args.cells):
            continue
        for T in Ts:
            xs = jnp.asarray(np.random.default_rng(T).standard_normal((T, args.D)) * 0.5, jnp.float32)
            h0 = jnp.zeros(args.D, jnp.float32)
            xs_sh = jax.device_put(xs, NamedSharding(mesh, P("t")))
            opts = {} if solver == "linear" else dict(tol=args.tol)
            one = autopar.parallelize(cell, solver=solver, **opts)
            shd = autopar.parallelize(cell, solver=solver, **opts)
            scan = jax.jit(lambda h0, xs: jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1])
            ref = scan(h0, xs)
            got, info = shd(h0, xs_sh, return_info=True)
            err = float(jnp.max(jnp.abs(got - ref)))
            its = int(info.iterations)
            t_scan = time_fn(lambda: scan(h0, xs), repeats=args.reps)
            t_one = time_fn(lambda: one(h0, xs), repeats=args.reps)
            t_sh = time_fn(lambda: shd(h0, xs_sh), repeats=args.reps)
            inner = autopar.parallelize(cell, solver=solver, mesh=mesh, axis_name="t", **opts)
            hlo = jax.jit(lambda h, x: inner(h, x)).lower(h0, xs).compile().as_text()
            nbytes, ncoll = collective_bytes(hlo)
            print(f"{name:<20} {T:>8} {t_scan * 1e3:>8.2f}ms {t_one * 1e3:>8.2f}ms {t_sh * 1e3:>8.2f}ms "
                  f"{t_sh / t_one:>7.2f} {nbytes:>12,} {ncoll:>6} {T * args.D * 4:>11,} {its:>5}"
                  + ("" if err < 1e-3 else f"  MISMATCH {err:.2e}"), flush=True)


if __name__ == "__main__":
    main()
