"""autopar's forced deer / quasi-deer against the peers' DEER and quasi-DEER, interleaved in one run.

    PYTHONPATH=. python3 benchmarks/peers.py --deer <deer checkout> --elk <elk checkout> --quick
    PYTHONPATH=. python3 benchmarks/peers.py --deer <deer checkout> --elk <elk checkout> \\
        --nh 8,32,64 --T 10000 --batch 1,16 --modes fwd,grad
    PYTHONPATH=. python3 benchmarks/peers.py --deer <deer checkout> --elk <elk checkout> \\
        --nh 8,32,64 --T 100000 --batch 1

``<deer checkout>`` is a local clone of https://github.com/machine-discovery/deer and
``<elk checkout>`` one of https://github.com/lindermanlab/elk, fetched by the user. Nothing of
theirs is committed or vendored here: the script imports their modules from those paths, and
either may be omitted (its contenders are then left out). Needs flax (the peers' cells are
flax ``GRUCell``s; benchmarks/flax_cells.py builds them as their speed benchmarks do).

Contenders (one flax GRUCell(features=nh), default init, h0 = 0, N(0, 1) inputs, float32):

* ``scan``       — ``jax.lax.scan`` of the cell: the oracle and the sequential baseline;
* ``md-deer``    — machine-discovery/deer ``deer.fseq1d.seq1d(..., method=seq1d.DEER())``
                   (dense Newton; that repo has no quasi-DEER). Stops when every
                   |Δh| ≤ 1e-4 + 1e-3·|h| (float32 defaults). Gradient: its ``custom_jvp``,
                   transposed by JAX (implicit, at its last Jacobians);
* ``elk-deer``   — lindermanlab/elk ``elk.algs.deer.seq1d(..., quasi=False)`` (the DEER code of
                   that paper, adapted from machine-discovery/deer). Stops when max|Δh| ≤ 1e-4;
* ``elk-qdeer``  — the same with ``quasi=True`` (``qmem_efficient=True``: its hand-written
                   diagonal of the flax GRU Jacobian). Its ``custom_vjp`` backward reuses the
                   *diagonal* Jacobians, so its gradient is not the true one (the ``grad err``
                   column measures by how much);
* ``ap-deer`` / ``ap-qdeer`` — ``autopar.parallelize(cell, solver="deer" / "quasi-deer",
                   fallback=False)``, default tolerance (residual ≤ 32·eps·(1 + max|h|)), exact
                   implicit adjoint (planner's backward).

Batch B > 1: every contender is ``jax.vmap``-ed over the batch (as the DEER benchmark does);
a vmapped ``while_loop`` runs until every member has converged, so "iters" is the max over
the batch. Forward: the states. Forward + gradient: ``jax.value_and_grad`` of
mean(h**2) over the trajectory w.r.t. the cell's parameters. Times: min and median of
``--repeats`` interleaved rounds (benchmarks.common.side_by_side), compile excluded, blocked
until ready. "err": max |h − h_scan| (forward) or max over leaves of
max|g − g_scan| / max|g_scan| (gradient).

Patches the peers need with jax 0.10.2 — applied here at run time, their files untouched:

1. machine-discovery/deer: ``deer/__init__.py`` imports ``deer.fsolve_idae``, which imports
   ``optimistix`` (not needed for ``seq1d``, not installed). The script registers an empty
   ``deer`` package pointing at ``<deer checkout>/deer`` in ``sys.modules`` and imports
   ``deer.fseq1d`` directly, so ``__init__`` never runs.
2. lindermanlab/elk: ``elk/algs/deer.py`` calls ``jnp.clip(x, a_min=..., a_max=...)``; jax
   0.10 removed those keywords (``min=`` / ``max=``). The script replaces that module's
   ``jnp`` global with a proxy of ``jax.numpy`` whose ``clip`` accepts both spellings.
   ``elk/__init__.py`` is bypassed the same way as in 1 (``elk.algs.elk`` needs dynamax,
   which ``elk.algs.deer`` does not).
3. Iteration counts of machine-discovery/deer: its ``seq1d`` returns only the states and a
   success flag. The script swaps the ``jax`` global of ``deer.deer_iter`` for a proxy whose
   ``lax.while_loop`` also hands the loop's final iteration counter to a
   ``jax.debug.callback`` in the forward programs (one host callback per call, microseconds
   against milliseconds; gradient programs are traced without it). Every forward program
   returns its iteration count beside the states, so one compiled program is both timed and
   counted.

Memory guard: a dense Jacobian trajectory is B·T·nh² floats and the associative scan holds
several; dense contenders (md-deer, elk-deer, ap-deer) are skipped where B·T·nh²·4 bytes
exceeds ``--max-jac-gib`` (default 1 GiB) — on the shared 23 GB machine nh = 64, B = 16,
T = 10⁴ is 2.4 GiB per copy.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import types

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import autopar  # noqa: E402
from benchmarks.common import machine_description, side_by_side  # noqa: E402
from benchmarks.flax_cells import make  # noqa: E402

DENSE = ("md-deer", "elk-deer", "ap-deer")


# ----------------------------------------------------------------------------- peers' imports
def _stub_package(name: str, path: str) -> None:
    """Register an empty package ``name`` at ``path`` so that ``name/__init__.py`` never runs."""
    if not os.path.isdir(path):
        raise SystemExit(f"no package directory {path!r}: pass the repository's root as the checkout path")
    m = types.ModuleType(name)
    m.__path__ = [path]
    sys.modules[name] = m


class _JnpProxy(types.ModuleType):
    """jax.numpy, with ``clip`` accepting numpy's old ``a_min`` / ``a_max`` keywords (patch 2)."""

    def __getattr__(self, k):
        return getattr(jnp, k)

    @staticmethod
    def clip(x, a_min=None, a_max=None, *, min=None, max=None):  # noqa: A002
        return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


_COUNTS: list = []
_COUNTING = {"on": False}


class _LaxProxy(types.ModuleType):
    def __getattr__(self, k):
        return getattr(jax.lax, k)

    @staticmethod
    def while_loop(cond, body, init):
        out = jax.lax.while_loop(cond, body, init)
        if _COUNTING["on"]:
            jax.debug.callback(lambda n: _COUNTS.append(int(jnp.max(n))), out[-1])
        return out


class _JaxProxy(types.ModuleType):
    lax = _LaxProxy("lax_proxy")

    def __getattr__(self, k):
        return getattr(jax, k)


def load_md_deer(path: str):
    _stub_package("deer", os.path.join(path, "deer"))
    import deer.deer_iter as deer_iter
    import deer.fseq1d as fseq1d

    deer_iter.jax = _JaxProxy("jax_proxy")  # patch 3 (inactive unless _COUNTING["on"])
    return fseq1d


def load_elk_deer(path: str):
    _stub_package("elk", os.path.join(path, "elk"))
    import elk.algs.deer as elk_deer

    elk_deer.jnp = _JnpProxy("jnp_proxy")  # patch 2
    return elk_deer


# ----------------------------------------------------------------------------- contenders
def trajectories(name, apply, h0, md=None, ek=None):
    """name -> (params, xs) -> (states (T, nh), iterations or None) for one unbatched sequence."""
    fn = functools.partial

    def scan(p, xs):
        return jax.lax.scan(lambda c, x: (apply(p, c, x),) * 2, h0, xs)[1], None

    def md_deer(p, xs):
        r = md.seq1d(lambda h, x, q: apply(q, h, x), h0, xs, p, method=md.seq1d.DEER())
        return r.value, None

    def elk_run(quasi, p, xs):
        y, it = ek.seq1d(lambda h, x, q: apply(q, h, x), h0, xs, p, quasi=quasi, qmem_efficient=True)
        return y, it

    def ap(solver, p, xs):
        f = autopar.parallelize(lambda h, x: apply(p, h, x), solver=solver, fallback=False)
        hs, info = f(h0, xs, return_info=True)
        return hs, info.iterations

    return {"scan": scan, "md-deer": md_deer, "elk-deer": fn(elk_run, False), "elk-qdeer": fn(elk_run, True),
            "ap-deer": fn(ap, "deer"), "ap-qdeer": fn(ap, "quasi-deer")}[name]


def batched(traj, batch):
    if batch is None:
        return traj
    return jax.vmap(traj, in_axes=(None, 0))


def rel_tree_err(g, g_ref):
    return max(float(jnp.max(jnp.abs(a - b)) / (1e-30 + jnp.max(jnp.abs(b))))
               for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)))


def bench(nh, T, batch, modes, names, md, ek, repeats, max_jac_gib):
    cell, h0, xs, params, apply = make("gru", nh, T, batch=None if batch == 1 else batch)
    B = None if batch == 1 else batch
    jac_gib = batch * T * nh * nh * 4 / 2**30
    names = [n for n in names if not (n in DENSE and jac_gib > max_jac_gib)]
    skipped = [n for n in DENSE if jac_gib > max_jac_gib]
    if skipped:
        print(f"  (skipping {', '.join(skipped)}: one dense J trajectory is {jac_gib:.2f} GiB > --max-jac-gib {max_jac_gib})")
    rows = []
    trajs = {n: batched(trajectories(n, apply, h0, md, ek), B) for n in names}
    if "fwd" in modes:
        def fwd_of(n, t):
            def f(p, x):
                hs, it = t(p, x)
                return hs, (jnp.int32(-1) if it is None else jnp.max(it))
            return jax.jit(f)
        _COUNTING["on"] = True  # md-deer's program reports its iteration counter (patch 3)
        try:
            fwd = {n: fwd_of(n, t) for n, t in trajs.items()}
            ref = fwd["scan"](params, xs)[0]
            _COUNTS.clear()
            outs = {n: jax.block_until_ready(f(params, xs)) for n, f in fwd.items()}
            jax.effects_barrier()
        finally:
            _COUNTING["on"] = False
        iters = {n: int(o[1]) for n, o in outs.items() if n != "scan"}
        if "md-deer" in iters:
            iters["md-deer"] = max(_COUNTS) if _COUNTS else None
        errs = {n: float(jnp.max(jnp.abs(o[0] - ref))) for n, o in outs.items()}
        del outs
        tm = side_by_side({n: (lambda f=f: f(params, xs)) for n, f in fwd.items()}, repeats=repeats, stat="median")
        for n in fwd:
            rows.append(("fwd", n, min(tm.samples[n]), tm[n], iters.get(n), errs[n]))
    if "grad" in modes:
        def loss_of(t):
            return lambda p, x: jnp.mean(t(p, x)[0] ** 2)
        vg = {n: jax.jit(jax.value_and_grad(loss_of(t))) for n, t in trajs.items()}
        g_ref = vg["scan"](params, xs)[1]
        errs = {n: rel_tree_err(f(params, xs)[1], g_ref) for n, f in vg.items()}
        tm = side_by_side({n: (lambda f=f: f(params, xs)) for n, f in vg.items()}, repeats=repeats, stat="median")
        for n in vg:
            rows.append(("grad", n, min(tm.samples[n]), tm[n], None, errs[n]))
    for mode, n, tmin, tmed, it, err in rows:
        print(f"  {nh:>3} {T:>7} {batch:>3} {mode:<5} {n:<10} {tmin * 1e3:>10.2f} {tmed * 1e3:>10.2f} "
              f"{'' if it is None else it:>6} {err:>9.2e}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deer", help="path of a machine-discovery/deer checkout")
    ap.add_argument("--elk", help="path of a lindermanlab/elk checkout")
    ap.add_argument("--nh", default="8,32,64")
    ap.add_argument("--T", default="10000")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--modes", default="fwd,grad")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-jac-gib", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="nh 8, T 500, batch 1 and 2, one repeat")
    a = ap.parse_args(argv)
    md = load_md_deer(a.deer) if a.deer else None
    ek = load_elk_deer(a.elk) if a.elk else None
    names = ["scan"] + (["md-deer"] if md else []) + (["elk-deer", "elk-qdeer"] if ek else []) + ["ap-deer", "ap-qdeer"]
    print(f"machine: {machine_description()}")
    print(f"deer checkout: {a.deer}; elk checkout: {a.elk}")
    print(f"  {'nh':>3} {'T':>7} {'B':>3} {'mode':<5} {'contender':<10} {'min ms':>10} {'median ms':>10} {'iters':>6} {'err':>9}")
    if a.quick:
        for b in (1, 2):
            bench(8, 500, b, ("fwd", "grad"), names, md, ek, 1, a.max_jac_gib)
        return
    for T in (int(float(t)) for t in a.T.split(",")):
        for nh in (int(n) for n in a.nh.split(",")):
            for b in (int(x) for x in a.batch.split(",")):
                bench(nh, T, b, tuple(a.modes.split(",")), names, md, ek, a.repeats, a.max_jac_gib)


if __name__ == "__main__":
    main()
