"""The sequential loop with the state-independent part of the step moved out (``autopar.hoist``)
against ``jax.lax.scan`` of the same cell, side by side: ns per step, and whether the split was made.

    PYTHONPATH=. python -m benchmarks.hoisting --T 4096 --repeats 20
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import autopar
from autopar import hoist

from .cells import CELLS, make_cell
from .common import machine_description, side_by_side


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cells", default=",".join(CELLS))
    args = ap.parse_args(argv)
    print(f"machine: {machine_description()}; T = {args.T}; min of {args.repeats} interleaved calls\n")
    print("| cell | split | lax.scan ns/step | autopar sequential ns/step | ratio | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for name in args.cells.split(","):
        cell, h0, make_xs, _ = make_cell(name, args.D)
        xs = make_xs(args.T)
        ref = jax.jit(lambda h, xs: jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h, xs)[1])
        ours = jax.jit(autopar.parallelize(cell, solver="sequential"))
        a, b = ref(h0, xs), ours(h0, xs)
        diff = max(float(jnp.max(jnp.abs(u - v) / (1 + jnp.abs(u)))) for u, v in zip(jax.tree.leaves(a),
                                                                                       jax.tree.leaves(b)))
        split = hoist.hoisted(cell, h0, xs) is not None
        t = side_by_side({"ref": lambda: ref(h0, xs), "ours": lambda: ours(h0, xs)}, repeats=args.repeats,
                         stat="min")
        r, o = t["ref"] / args.T * 1e9, t["ours"] / args.T * 1e9
        print(f"| {name} | {'yes' if split else 'no'} | {r:.1f} | {o:.1f} | {o / r:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
