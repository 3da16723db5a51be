"""Time-sharded (sequence-parallel) solves on 8 host devices: both entry points, a 2-D mesh
(batch × time), and a gradient — each checked against jax.lax.scan.

    python examples/sharded.py            # sets XLA_FLAGS for 8 CPU devices itself
    python examples/sharded.py --T 4096
"""

import argparse
import os
import sys

# 8 CPU devices, before JAX starts (replacing a smaller count inherited from the environment)
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join(_flags + ["--xla_force_host_platform_device_count=8"])

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import autopar


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--D", type=int, default=8)
    args = ap.parse_args()
    T, D = args.T, args.D
    devices = jax.devices()
    if len(devices) < 8:
        sys.exit(f"this example needs 8 devices; got {len(devices)} (XLA_FLAGS was set too late?)")

    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.standard_normal((D, D)) * 0.4, jnp.float32)
    a = jnp.asarray(rng.uniform(0.5, 0.95, D), jnp.float32)

    def cell(h, x):  # a diagonal tanh RNN: deer runs exact Newton at diagonal cost
        return jnp.tanh(a * h + x @ W)

    def scan(h0, xs):
        return jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]

    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    h0 = jnp.zeros(D, jnp.float32)
    ref = scan(h0, xs)
    failures = []

    def report(what, got, want, tol=1e-4):
        err = float(jnp.max(jnp.abs(got - want)))
        print(f"{what:<58} max |Δ| vs lax.scan = {err:.1e}")
        if not err < tol:
            failures.append(what)

    # 1. Entry point 1: xs sharded along time. The result comes back sharded the same way.
    mesh = Mesh(np.array(devices), ("t",))
    xs_t = jax.device_put(xs, NamedSharding(mesh, P("t")))
    fn = autopar.parallelize(cell, solver="deer")
    hs = fn(h0, xs_t)
    report(f"entry 1: xs sharded over 8 devices ({hs.sharding.spec})", hs, ref)
    for line in str(fn.explain(h0, xs_t)).splitlines():
        if line.startswith(("solver:", "sharding:")):
            print("   ", line)

    # T not divisible by P: mesh= shards inputs itself and pads with copies of the last input.
    fn_mesh = autopar.parallelize(cell, solver="deer", mesh=mesh, axis_name="t")
    report(f"entry 1 with mesh=, T = {T - 3} (not divisible by 8)", fn_mesh(h0, xs[:-3]), ref[:-3])

    # 2. Entry point 2: inside your own shard_map, on each shard's chunk.
    inner = autopar.parallelize(cell, solver="deer", axis_name="t")
    T8 = T - T % 8
    body = jax.shard_map(lambda h, x: inner(h, x), mesh=mesh, in_specs=(P(), P("t")), out_specs=P("t"),
                         check_vma=False)
    report("entry 2: inside jax.shard_map(check_vma=False)", jax.jit(body)(h0, xs[:T8]), ref[:T8])

    # 3. A 2-D mesh: batch × time. h0 sharded over batch, xs over (time, batch).
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("batch", "t"))
    B = 4
    xb = jnp.asarray(rng.standard_normal((T, B, D)), jnp.float32)
    hb = jnp.zeros((B, D), jnp.float32)
    xb_s = jax.device_put(xb, NamedSharding(mesh2, P("t", "batch")))
    hb_s = jax.device_put(hb, NamedSharding(mesh2, P("batch")))
    got = autopar.parallelize(cell, solver="deer")(hb_s, xb_s)
    report(f"2-D mesh batch×time: result sharded {got.sharding.spec}", got, scan(hb, xb))

    # 4. Gradients through the sharded solve (the adjoint is the same two-level solve, backward).
    def loss(W_, solve):
        return jnp.sum(solve(W_) ** 2)

    def sharded(W_):
        c = lambda h, x: jnp.tanh(a * h + x @ W_)  # noqa: E731
        return autopar.parallelize(c, solver="deer", mesh=mesh, axis_name="t")(h0, xs)

    def plain(W_):
        return jax.lax.scan(lambda h, x: (jnp.tanh(a * h + x @ W_),) * 2, h0, xs)[1]

    g1, g2 = jax.grad(loss)(W, sharded), jax.grad(loss)(W, plain)
    report("gradient w.r.t. the weights", g1 / jnp.max(jnp.abs(g2)), g2 / jnp.max(jnp.abs(g2)))

    if failures:
        sys.exit(f"MISMATCH: {failures}")
    print("every result matches lax.scan")


if __name__ == "__main__":
    main()
