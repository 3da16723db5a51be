"""DeltaNet / Gated DeltaNet: autopar (chunked WY scan) vs lax.scan vs a dense-factor associative scan.

    python benchmarks/deltanet.py --quick          # small sizes, a smoke run
    python benchmarks/deltanet.py                  # T=4096, dk=dv in {64, 128} (run on a quiet machine)

Times are the median of --repeats runs after one warm-up (block_until_ready); memory is XLA's
compiled temp + output buffer size (``memory_analysis``), which is what the program allocates.
All three methods compute every state S_1..S_T; ratios are measured in one run.
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
import numpy as np  # noqa: E402

import autopar  # noqa: E402


def deltanet(S, x):
    k, v, g = x
    k, beta = k / jnp.linalg.norm(k), jax.nn.sigmoid(g)
    return S - beta * jnp.outer(k, k @ S) + beta * jnp.outer(k, v)


def gated_deltanet(S, x):
    k, v, g = x
    k, beta, alpha = k / jnp.linalg.norm(k), jax.nn.sigmoid(g), jax.nn.sigmoid(g + 2.0)
    return alpha * (S - beta * jnp.outer(k, k @ S)) + beta * jnp.outer(k, v)


def dense_factor_scan(cell):
    """Hand-written baseline: per-step dense (dk × dk) factors, associative scan of matmuls."""

    def run(S0, xs):
        dk = S0.shape[0]

        def factors(x):
            M = jax.jacfwd(lambda s: cell(s, x))(jnp.zeros_like(S0))  # (dk, dv, dk, dv)
            A = M[:, 0, :, 0]  # left action: J = A ⊗ I
            return A, cell(jnp.zeros_like(S0), x)

        A, B = jax.vmap(factors)(xs)
        B = B.at[0].add(A[0] @ S0)

        def combine(e1, e2):
            A1, B1 = e1
            A2, B2 = e2
            hi = jax.lax.Precision.HIGHEST
            return jnp.matmul(A2, A1, precision=hi), jnp.matmul(A2, B1, precision=hi) + B2

        del dk
        return jax.lax.associative_scan(combine, (A, B))[1]

    return run


def seq(cell):
    return lambda S0, xs: jax.lax.scan(lambda s, x: (cell(s, x),) * 2, S0, xs)[1]


def measure(fn, args, repeats):
    jf = jax.jit(fn)
    compiled = jf.lower(*args).compile()
    mem = None
    try:
        ma = compiled.memory_analysis()
        mem = ma.temp_size_in_bytes + ma.output_size_in_bytes
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    out = jf(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jf(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), mem, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (T=256, d=16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-factor baseline")
    args = ap.parse_args(argv)
    sizes = [(256, 16)] if args.quick else [(4096, 64), (4096, 128)]
    dtype = jnp.dtype(args.dtype)
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} dtype={dtype.name}")
    print(f"{'cell':<16}{'T':>6}{'d':>5}  {'method':<22}{'time':>11}{'memory':>12}{'vs scan':>9}  max|err|")
    for T, d in sizes:
        rng = np.random.default_rng(0)
        xs = (jnp.asarray(rng.normal(size=(T, d)), dtype), jnp.asarray(rng.normal(size=(T, d)), dtype),
              jnp.asarray(rng.normal(size=(T,)), dtype))
        S0 = jnp.asarray(rng.normal(size=(d, d)) * 0.1, dtype)
        for cell in (deltanet, gated_deltanet):
            par = autopar.parallelize(cell, solver="linear")
            methods = [("lax.scan", seq(cell)), ("autopar (chunked WY)", par)]
            if not args.no_dense:
                methods.append(("dense-factor assoc.", dense_factor_scan(cell)))
            ref = None
            base = None
            for name, fn in methods:
                try:
                    t, mem, out = measure(fn, (S0, xs), args.repeats)
                except jax.errors.JaxRuntimeError as e:  # the dense baseline can exceed host memory
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    print(f"{cell.__name__:<16}{T:>6}{d:>5}  {name:<22}  out of memory: {str(e).splitlines()[0][:60]}")
                    continue
                if ref is None:
                    ref, base = out, t
                err = float(jnp.max(jnp.abs(out - ref)))
                mem_s = f"{mem / 2**20:.1f} MiB" if mem is not None else "?"
                print(f"{cell.__name__:<16}{T:>6}{d:>5}  {name:<22}{t * 1e3:>9.2f}ms{mem_s:>12}{base / t:>8.2f}x  {err:.2e}")
            print(f"{'':<27}autopar plan: {par.explain(S0, xs).structure.describe()}")


if __name__ == "__main__":
    main()
