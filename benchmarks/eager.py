"""Steady-state eager calls: autopar.scan against jax.lax.scan, called from Python in a loop.

A tanh RNN (``h = tanh(W h + U x)``, ``y = h·v``) at T = 200 for D = 16, 32, 64; each row is the
mean time per call over ``--calls`` eager calls (each blocks until ready) after two warm-up calls,
for two ways of calling:

* ``same f``   — one body object, passed on every call;
* ``new f``    — a lambda re-created per call over the same arrays (what a loop body often does).

autopar.scan's cache recognises a re-created body by its code and what it captures (arrays by
identity), so both are one cached jitted dispatch once warm. ``ratio`` = autopar / lax.

    PYTHONPATH=. python3 benchmarks/eager.py                 # D = 16, 32, 64; 50 calls
    PYTHONPATH=. python3 benchmarks/eager.py --D 16 --calls 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import autopar


def setup(D, T, key=jax.random.PRNGKey(0)):
    k = jax.random.split(key, 4)
    W = jax.random.normal(k[0], (D, D)) * (0.9 / D**0.5)
    U = jax.random.normal(k[1], (D, D)) / D**0.5
    v = jax.random.normal(k[2], (D,))
    xs = jax.random.normal(k[3], (T, D))
    return W, U, v, xs


def make_body(W, U, v):
    def body(h, x):
        h = jnp.tanh(W @ h + U @ x)
        return h, h @ v

    return body


def per_call(scan, body_of, h0, xs, calls):
    """Mean seconds per eager call after two warm-up calls; ``body_of()`` gives the body each call."""
    for _ in range(2):
        jax.block_until_ready(scan(body_of(), h0, xs))
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(scan(body_of(), h0, xs))
        ts.append(time.perf_counter() - t0)
    return statistics.mean(ts), statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=int, nargs="*", default=[16, 32, 64])
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args(argv)
    print(f"backend={jax.default_backend()} jax={jax.__version__} T={args.T} calls={args.calls} "
          f"x64={jax.config.jax_enable_x64}")
    print(f"{'D':>4} {'call':8} {'lax ms':>9} {'autopar ms':>11} {'ratio':>7}   (mean per call; median in brackets)")
    rows = []
    for D in args.D:
        W, U, v, xs = setup(D, args.T)
        h0 = jnp.zeros(D)
        same = make_body(W, U, v)
        for label, body_of in (("same f", lambda: same),
                               ("new f", lambda: (lambda h, x: (jnp.tanh(W @ h + U @ x),) * 2))):
            lax_t = per_call(jax.lax.scan, body_of, h0, xs, args.calls)
            ap_t = per_call(autopar.scan, body_of, h0, xs, args.calls)
            rows.append(dict(D=D, call=label, lax_s=lax_t[0], autopar_s=ap_t[0]))
            print(f"{D:4d} {label:8} {1e3 * lax_t[0]:9.3f} {1e3 * ap_t[0]:11.3f} {ap_t[0] / lax_t[0]:7.2f}   "
                  f"[{1e3 * lax_t[1]:.3f} / {1e3 * ap_t[1]:.3f}]", flush=True)
    return rows


if __name__ == "__main__":
    main()
