"""Time-sharded solves (issue 13) on 8 host devices: both entry points, every sharded solver,
the structure kinds, uneven T, P = 1, 2, 8, reverse, pytree and integer leaves, gradients, vmap,
a 2-D mesh, and the compiled program's collectives (O(P·D), not O(T·D)).

The checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so
they run in ONE subprocess (this file run as a script: ``python tests/test_sharding.py``), which
prints one JSON line per check; the tests below read that output (the other test modules keep
one device). Each check compares with ``lax.scan`` (the oracle) and with the single-device solve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1200


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["name"]] = d
    assert r.returncode == 0 or out, f"the sharding checks crashed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out["__stderr__"] = r.stderr
    return out


GROUPS = ["kinds", "newton", "entry1", "uneven", "reverse", "pytree", "grad", "vmap", "mesh2d", "hlo", "explain",
          "errors"]


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("group", GROUPS)
def test_sharding(results, group):
    mine = {k: v for k, v in results.items() if k.split(":")[0] == group}
    assert mine, f"no {group} checks ran:\n{results['__stderr__'][-3000:]}"
    bad = {k: v for k, v in mine.items() if not v["ok"]}
    assert not bad, json.dumps(bad, indent=1)


# ============================================================================================
# The child: runs every check on 8 host devices and prints one JSON line each.
# ============================================================================================
def _child():  # noqa: C901 - one script of checks
    import traceback

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import autopar

    assert len(jax.devices()) == 8, jax.devices()
    devs = np.array(jax.devices())
    meshes = {p: Mesh(devs[:p], ("t",)) for p in (1, 2, 4, 8)}

    def report(name, ok, **kw):
        print(json.dumps(dict(name=name, ok=bool(ok), **kw)), flush=True)

    only = [g for g in os.environ.get("AUTOPAR_SHARD_CHECKS", "").split(",") if g]

    def check(name, fn):
        if only and name.split(":")[0] not in only:  # a subset, while developing
            return
        try:
            ok, info = fn()
            report(name, ok, **info)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            report(name, False, error=f"{type(e).__name__}: {e}"[:2000], tb=traceback.format_exc()[-2000:])

    def scan_ref(cell, h0, xs, reverse=False):
        return jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs, reverse=reverse)[1]

    def err(a, b):
        la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
        return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
                   for x, y in zip(la, lb))

    def inside(fn, mesh, h0, xs, reverse=False):
        """Entry point 2: fn (axis_name='t') called on each shard's chunk inside our shard_map."""
        body = lambda h, x: fn(h, x, reverse=reverse)  # noqa: E731
        sm = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("t")), out_specs=P("t"), check_vma=False)
        return jax.jit(sm)(h0, xs)

    rng = np.random.default_rng(0)

    def arr(*shape, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)

    D = 6
    a_vec = jnp.asarray(rng.uniform(0.5, 0.95, D), jnp.float32)
    perm = np.array([3, 0, 1, 5, 2, 4])
    B = arr(D // 2, 2, 2, scale=0.5)
    W = arr(D, D, scale=0.3)
    H, m, n = 2, 3, 4
    Wk, Wv = arr(D, n), arr(D, m)
    g_mat = jnp.asarray(rng.uniform(0.6, 0.99, (H, n)), jnp.float32)

    def deltanet(S, x):  # S (m, n) ← S (I − β k kᵀ) + β v kᵀ: kronecker(householder)
        k = x @ Wk
        k = k / (jnp.linalg.norm(k) + 1e-6)
        v = x @ Wv
        beta = jax.nn.sigmoid(x[0])
        return S - beta * jnp.outer(S @ k - v, k)

    cells = {
        # name: (cell, h0, make_xs(T), expected kind prefix)
        "zero": (lambda h, x: 2.0 * x, jnp.zeros(D), lambda T: arr(T, D), "zero"),
        "identity": (lambda h, x: h + x, jnp.ones(D), lambda T: arr(T, D), "identity"),
        "scalar": (lambda h, x: 0.9 * h + x, jnp.ones(D), lambda T: arr(T, D), "scalar"),
        "diagonal": (lambda h, x: a_vec * h + x, jnp.ones(D), lambda T: arr(T, D), "diagonal"),
        "monomial": (lambda h, x: a_vec * h[perm] + x, jnp.ones(D), lambda T: arr(T, D), "monomial"),
        "block": (lambda h, x: jnp.einsum("kij,kj->ki", B, h.reshape(-1, 2)).reshape(-1) + x, jnp.ones(D),
                  lambda T: arr(T, D), "block"),
        "dense": (lambda h, x: (W @ h) + x, jnp.ones(D), lambda T: arr(T, D), "dense"),
        "kron-diag": (lambda S, x: S * g_mat[:, None, :] + x, jnp.ones((H, m, n)), lambda T: arr(T, H, m, n),
                      "kronecker"),
        "kron-householder": (deltanet, jnp.zeros((m, n)), lambda T: arr(T, D), "kronecker(householder)"),
    }
    T = 24
    # ---- kinds × the linear and sequential solvers, P = 4 (entry point 2) ------------------------
    for name, (cell, h0, mk, kind) in cells.items():
        xs = mk(T)
        ref = scan_ref(cell, h0, xs)
        for solver in ("linear", "sequential") if name in ("diagonal", "kron-householder") else ("linear",):
            def run(cell=cell, h0=h0, xs=xs, ref=ref, solver=solver, kind=kind):
                fn = autopar.parallelize(cell, solver=solver, axis_name="t")
                got = inside(fn, meshes[4], h0, xs)
                one = autopar.parallelize(cell, solver=solver)(h0, xs)
                found = autopar.parallelize(cell).explain(h0, xs).facts["structure"].kind
                e1, e2 = err(got, ref), err(got, one)
                return e1 < 2e-4 and e2 < 2e-4 and found.startswith(kind), dict(vs_scan=e1, vs_one=e2, kind=found)

            check(f"kinds:{name}:{solver}", run)

    # ---- Newton solvers on nonlinear cells and on kinds ------------------------------------------
    U = arr(D, D, scale=0.4)
    newton_cells = {
        "tanh-diag": (lambda h, x: jnp.tanh(a_vec * h + x), jnp.zeros(D), lambda T: arr(T, D)),
        "tanh-dense": (lambda h, x: jnp.tanh(U @ h + x), jnp.zeros(D), lambda T: arr(T, D)),
        "tanh-block": (lambda h, x: jnp.tanh(jnp.einsum("kij,kj->ki", B, h.reshape(-1, 2)).reshape(-1) + x),
                       jnp.zeros(D), lambda T: arr(T, D)),
        "tanh-monomial": (lambda h, x: jnp.tanh(a_vec * h[perm] + x), jnp.zeros(D), lambda T: arr(T, D)),
        "kron-diag": cells["kron-diag"][:3],
    }
    for name, (cell, h0, mk) in newton_cells.items():
        xs = mk(T)
        ref = scan_ref(cell, h0, xs)
        for solver in ("deer", "quasi-deer", "elk", "quasi-elk"):
            if solver.endswith("elk") and (name, solver) not in (("tanh-dense", "elk"), ("tanh-block", "quasi-elk")):
                continue

            def run(cell=cell, h0=h0, xs=xs, ref=ref, solver=solver):
                fn = autopar.parallelize(cell, solver=solver, axis_name="t", fallback=False)
                body = lambda h, x: fn(h, x, return_info=True)  # noqa: E731
                sm = jax.shard_map(body, mesh=meshes[4], in_specs=(P(), P("t")), out_specs=(P("t"), P()),
                                   check_vma=False)
                got, info = jax.jit(sm)(h0, xs)
                e = err(got, ref)
                return e < 2e-4 and bool(info.converged), dict(vs_scan=e, iterations=int(info.iterations),
                                                               residual=float(info.residual))

            check(f"newton:{name}:{solver}", run)

    # ---- entry point 1: xs sharded along time, P = 1, 2, 8 ---------------------------------------
    cell_nl, h0_nl, _ = newton_cells["tanh-diag"]
    for p, solvers in ((1, (None,)), (2, ("linear", "quasi-deer", "sequential", None)), (8, ("linear", "deer"))):
        for solver in solvers:
            c = cells["diagonal"][0] if solver == "linear" else cell_nl
            h0 = jnp.ones(D)
            xs = jax.device_put(arr(T * 2, D), NamedSharding(meshes[p], P("t")))

            def run(c=c, h0=h0, xs=xs, solver=solver, p=p):
                fn = autopar.parallelize(c, solver=solver, fallback=False)
                got = fn(h0, xs)
                ref = scan_ref(c, h0, np.asarray(xs))
                spec = got.sharding.spec if isinstance(got.sharding, NamedSharding) else None
                e = err(got, ref)
                sharded = p == 1 or (spec is not None and len(spec) > 0 and spec[0] == "t")
                return e < 2e-4 and sharded, dict(vs_scan=e, spec=str(spec))

            check(f"entry1:P{p}:{solver or 'auto'}", run)

    def explicit_mesh():  # jax.make_mesh's default axis type is Explicit: reshard, not constraints
        mesh = jax.make_mesh((4,), ("t",))
        c, h0 = cell_nl, jnp.zeros(D)
        xs = arr(T, D)
        got = autopar.parallelize(c, solver="deer", fallback=False)(h0, jax.device_put(xs, NamedSharding(mesh, P("t"))))
        got2 = autopar.parallelize(c, solver="deer", mesh=mesh, axis_name="t", fallback=False)(h0, xs[:-3])
        e1, e2 = err(got, scan_ref(c, h0, xs)), err(got2, scan_ref(c, h0, xs[:-3]))
        return max(e1, e2) < 2e-4, dict(divisible=e1, uneven=e2)

    check("entry1:explicit_mesh", explicit_mesh)

    # ---- uneven T: padded with copies of the last input, through mesh= ---------------------------
    for Tu in (5, 23):
        for solver in ("linear", "deer"):
            c = cells["diagonal"][0] if solver == "linear" else cell_nl

            def run(c=c, Tu=Tu, solver=solver):
                xs = arr(Tu, D)
                h0 = jnp.ones(D)
                fn = autopar.parallelize(c, solver=solver, mesh=meshes[8], axis_name="t", fallback=False)
                out = []
                for rev in (False, True):
                    got = fn(h0, xs, reverse=rev)
                    out.append(err(got, scan_ref(c, h0, xs, reverse=rev)))
                return max(out) < 2e-4 and got.shape == (Tu, D), dict(errors=out)

            check(f"uneven:T{Tu}:{solver}", run)

    # ---- reverse=True, both entry points -----------------------------------------------------
    for solver in ("linear", "deer", "quasi-deer", "elk", "sequential"):
        c = cells["block"][0] if solver == "linear" else newton_cells["tanh-block"][0]

        def run(c=c, solver=solver):
            xs = arr(T, D)
            h0 = jnp.ones(D)
            ref = scan_ref(c, h0, xs, reverse=True)
            fn = autopar.parallelize(c, solver=solver, axis_name="t", fallback=False)
            e2 = err(inside(fn, meshes[4], h0, xs, reverse=True), ref)
            xs_s = jax.device_put(xs, NamedSharding(meshes[8], P("t")))
            e1 = err(autopar.parallelize(c, solver=solver, fallback=False)(h0, xs_s, reverse=True), ref)
            return max(e1, e2) < 2e-4, dict(entry1=e1, entry2=e2)

        check(f"reverse:{solver}", run)

    # ---- pytree state with an integer counter (affine) and an integer leaf read by floats -----
    def counter_cell(s, x):
        h, n = s["h"], s["n"]
        return {"h": jnp.tanh(a_vec * h + x["u"]), "n": n + x["k"]}

    def coupled(s, x):  # the integer leaf reads the float state: one joint pipeline
        h, n = s
        return jnp.tanh(a_vec * h + x) + 0.01 * n, n + (h[0] > 0).astype(jnp.int32)

    for solver in ("deer", "sequential", None):
        def run(solver=solver):
            xs = {"u": arr(T, D), "k": jnp.asarray(rng.integers(0, 5, T), jnp.int32)}
            h0 = {"h": jnp.zeros(D), "n": jnp.asarray(3, jnp.int32)}
            ref = scan_ref(counter_cell, h0, xs)
            fn = autopar.parallelize(counter_cell, solver=solver, axis_name="t")
            sm = jax.shard_map(lambda h, x: fn(h, x), mesh=meshes[4], in_specs=(P(), P("t")), out_specs=P("t"),
                               check_vma=False)
            got = jax.jit(sm)(h0, xs)
            same_int = bool(jnp.all(got["n"] == ref["n"])) and got["n"].dtype == jnp.int32
            e = err(got["h"], ref["h"])
            xs2 = arr(T, D)
            h02 = (jnp.zeros(D), jnp.asarray(0, jnp.int32))
            solver2 = None if solver == "deer" else solver  # only the pipeline solves a coupled integer leaf
            got2 = autopar.parallelize(coupled, solver=solver2, mesh=meshes[4], axis_name="t")(h02, xs2)
            ref2 = scan_ref(coupled, h02, xs2)
            e2 = err(got2[0], ref2[0])
            return e < 2e-4 and same_int and e2 < 2e-4 and bool(jnp.all(got2[1] == ref2[1])), dict(
                vs_scan=e, int_equal=same_int, coupled=e2)

        check(f"pytree:{solver or 'auto'}", run)

    # ---- gradients: h0, xs and closed-over parameters, every backward mode ------------------
    def grads_case(solver, backward, p):
        Wp = arr(D, D, scale=0.3)
        xs = arr(T, D)
        h0 = arr(D, scale=0.1)

        def make(W):
            return lambda h, x: jnp.tanh(a_vec * h + x) + 0.1 * jnp.sin(W @ x) if solver == "quasi-deer" else (
                (a_vec * h + W @ x) if solver == "linear" else jnp.tanh(a_vec * h + W @ x))

        def loss_ref(W, h0, xs):
            return jnp.sum(jnp.sin(scan_ref(make(W), h0, xs)) * jnp.arange(T)[:, None])

        def loss_sh(W, h0, xs):
            fn = autopar.parallelize(make(W), solver=solver, backward=backward, mesh=meshes[p], axis_name="t",
                                     fallback=False)
            return jnp.sum(jnp.sin(fn(h0, xs)) * jnp.arange(T)[:, None])

        g1 = jax.grad(loss_sh, argnums=(0, 1, 2))(Wp, h0, xs)
        g2 = jax.grad(loss_ref, argnums=(0, 1, 2))(Wp, h0, xs)
        e = [err(u, v) / (1e-6 + float(jnp.max(jnp.abs(v)))) for u, v in zip(g1, g2)]
        return max(e) < 1e-4, dict(rel_errors=e)

    for solver, backward in (("linear", "linear"), ("linear", "autodiff"), ("deer", "linear"), ("elk", "linear"),
                             ("deer", "sequential"), ("quasi-deer", "linear"), ("sequential", "sequential"),
                             ("sequential", "autodiff")):
        p = 8 if backward == "linear" else 2
        check(f"grad:{solver}:{backward}:P{p}", lambda s=solver, b=backward, p=p: grads_case(s, b, p))

    def grad_inside():  # entry point 2 under jax.grad, through the user's shard_map
        c = lambda h, x: jnp.tanh(a_vec * h + x)  # noqa: E731
        xs, h0 = arr(T, D), arr(D, scale=0.1)
        fn = autopar.parallelize(c, solver="deer", axis_name="t")  # the full chain: deer → elk → sequential
        sm = jax.shard_map(lambda h, x: fn(h, x), mesh=meshes[4], in_specs=(P(), P("t")), out_specs=P("t"),
                           check_vma=False)
        g1 = jax.grad(lambda h, x: jnp.sum(sm(h, x) ** 2), argnums=(0, 1))(h0, xs)
        g2 = jax.grad(lambda h, x: jnp.sum(scan_ref(c, h, x) ** 2), argnums=(0, 1))(h0, xs)
        e = [err(u, v) for u, v in zip(g1, g2)]
        return max(e) < 1e-4, dict(errors=e)

    check("grad:inside_shard_map", grad_inside)

    # ---- jit and vmap over a batch -----------------------------------------------------------
    def vmapped():
        c = newton_cells["tanh-dense"][0]
        xs, h0 = arr(3, T, D), arr(3, D, scale=0.1)
        fn = autopar.parallelize(c, solver="deer", mesh=meshes[4], axis_name="t", fallback=False)
        got = jax.jit(jax.vmap(fn))(h0, xs)
        ref = jax.vmap(lambda h, x: scan_ref(c, h, x))(h0, xs)
        fn2 = autopar.parallelize(c, solver="deer", axis_name="t", fallback=False)
        sm = jax.shard_map(jax.vmap(lambda h, x: fn2(h, x)), mesh=meshes[4], in_specs=(P(), P(None, "t")),
                           out_specs=P(None, "t"), check_vma=False)
        got2 = jax.jit(sm)(h0, xs)
        return max(err(got, ref), err(got2, ref)) < 2e-4, dict(entry1=err(got, ref), entry2=err(got2, ref))

    check("vmap:deer", vmapped)

    # ---- a 2-D mesh: batch × time -------------------------------------------------------------
    def mesh2d():
        mesh = Mesh(devs.reshape(2, 4), ("batch", "t"))
        c = lambda h, x: jnp.tanh(a_vec * h + x)  # noqa: E731  (h: (batch, D))
        xs = jax.device_put(arr(T, 4, D), NamedSharding(mesh, P("t", "batch")))
        h0 = jax.device_put(jnp.zeros((4, D)), NamedSharding(mesh, P("batch")))
        got = autopar.parallelize(c, solver="deer", fallback=False)(h0, xs)
        ref = scan_ref(c, np.asarray(h0), np.asarray(xs))
        return err(got, ref) < 2e-4 and tuple(got.sharding.spec)[:2] == ("t", "batch"), dict(
            error=err(got, ref), spec=str(got.sharding.spec))

    check("mesh2d:batch_x_time", mesh2d)

    # ---- the compiled program: collectives move O(P·D) numbers, not O(T·D) -------------------
    import re

    def collectives(fn, h0, xs):
        hlo = jax.jit(fn).lower(h0, xs).compile().as_text()
        rows = []
        for line in hlo.splitlines():
            mt = re.search(r"= (\S+?)\[([\d,]*)\]\S* (all-gather|collective-permute|all-reduce|all-to-all)\(", line)
            if mt:
                dims = [int(d) for d in mt.group(2).split(",") if d]
                rows.append((mt.group(3), int(np.prod(dims)) if dims else 1))
            elif re.search(r"(all-gather|collective-permute|all-reduce|all-to-all)(-start)?\(", line):
                tup = re.findall(r"\[([\d,]*)\]", line.split("=")[1].split("(")[0])
                rows.append(("tuple", sum(int(np.prod([int(d) for d in t.split(",") if d] or [1])) for t in tup)))
        return rows

    for solver, cname in (("linear", "dense"), ("deer", "tanh-dense"), ("linear", "kron-householder")):
        def run(solver=solver, cname=cname):
            c, h0 = (cells[cname][:2] if cname in cells else newton_cells[cname][:2])
            mk = cells[cname][2] if cname in cells else newton_cells[cname][2]
            sizes = {}
            for Tn in (64, 1024):
                xs = mk(Tn)
                fn = autopar.parallelize(c, solver=solver, mesh=meshes[8], axis_name="t", fallback=False)
                sizes[Tn] = collectives(lambda h, x: fn(h, x), h0, xs)
            small = max(n for _, n in sizes[64]) if sizes[64] else 0
            big = max(n for _, n in sizes[1024]) if sizes[1024] else 0
            Dn = int(np.prod(np.shape(h0)))
            bound = 8 * (Dn * Dn + Dn) + Dn  # P × (a dense transition + D) bounds every kind's summary
            ok = bool(sizes[1024]) and big == small and big <= bound and big < 1024 * Dn
            return ok, dict(largest_T64=small, largest_T1024=big, bound=bound, n_collectives=len(sizes[1024]),
                            T_times_D=1024 * Dn)

        check(f"hlo:{solver}:{cname}", run)

    # ---- explain shows the sharded plan -----------------------------------------------------
    def explain():
        c = newton_cells["tanh-diag"][0]
        xs = jax.device_put(arr(T, D), NamedSharding(meshes[8], P("t")))
        text = str(autopar.parallelize(c).explain(jnp.zeros(D), xs))
        ok = "time-sharded over mesh axis 't'" in text and "P = 8" in text
        return ok, dict(text=text[-1500:])

    check("explain:sharded_plan", explain)

    # ---- clear errors ------------------------------------------------------------------------
    def errors():
        c = newton_cells["tanh-diag"][0]
        msgs = []
        try:
            autopar.parallelize(c, axis_name="t")(jnp.zeros(D), arr(T, D))
        except ValueError as e:
            msgs.append(str(e))
        try:
            fn = autopar.parallelize(c, axis_name="t")
            jax.jit(jax.shard_map(lambda h, x: fn(h, x), mesh=meshes[2], in_specs=(P(), P("t")),
                                  out_specs=P("t")))(jnp.zeros(D), arr(T, D))
        except ValueError as e:
            msgs.append(str(e))
        ok = len(msgs) == 2 and "shard_map" in msgs[0] and "check_vma=False" in msgs[1]
        return ok, dict(messages=[m[:300] for m in msgs])

    check("errors:messages", errors)

    def forward_mode():  # jax.jvp through a sharded solve: a clear refusal (both entry points, autopar.scan)
        c = newton_cells["tanh-diag"][0]
        xs = arr(16, D)
        msgs = []
        fn = autopar.parallelize(c, solver="sequential", mesh=meshes[2], axis_name="t")
        inside = autopar.parallelize(c, solver="sequential", axis_name="t")
        sm = jax.shard_map(lambda h, x: inside(h, x), mesh=meshes[2], in_specs=(P(), P("t")), out_specs=P("t"),
                           check_vma=False)
        runs = [lambda x: fn(jnp.zeros(D), x), lambda x: sm(jnp.zeros(D), x),
                lambda x: autopar.scan(lambda h, u: (c(h, u),) * 2, jnp.zeros(D), x, mesh=meshes[2], axis_name="t")[1]]
        for run, x in zip(runs, (xs, xs, xs)):
            try:
                jax.jvp(run, (x,), (jnp.ones_like(x),))
            except autopar.AutoparError as e:
                msgs.append(str(e))
        ok = len(msgs) == 3 and all("not supported through a time-sharded solve" in m and "unsharded" in m
                                    for m in msgs)
        return ok, dict(messages=[m[:200] for m in msgs])

    check("errors:forward_mode", forward_mode)

    def scan_on_mesh():  # autopar.scan with mesh=: the sharded solve, then the ys; values and grads as lax.scan
        c = newton_cells["tanh-diag"][0]
        xs, h0 = arr(16, D), arr(D, scale=0.1)
        body = lambda h, u: (c(h, u), jnp.sum(h * u))  # noqa: E731
        got = autopar.scan(body, h0, xs, mesh=meshes[2], axis_name="t")
        want = jax.lax.scan(body, h0, xs)
        g1 = jax.grad(lambda x: autopar.scan(body, h0, x, mesh=meshes[2], axis_name="t")[1].sum())(xs)
        g2 = jax.grad(lambda x: jax.lax.scan(body, h0, x)[1].sum())(xs)
        e = [err(got[0], want[0]), err(got[1], want[1]), err(g1, g2)]
        return max(e) < 1e-4, dict(errors=e)

    check("entry1:autopar_scan_mesh", scan_on_mesh)


if __name__ == "__main__":
    _child()
