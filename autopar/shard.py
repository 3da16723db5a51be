r"""The emitter for time-sharded solves: one shard's program inside ``jax.shard_map``.

``build(rec, plan, axis)`` is ``autopar.emit.build`` for a sequence split along the mesh axis
``axis.name``: every shard runs it on its own chunk of L = T/P steps and gets that chunk's
true states. The solvers' two-level forms are ``autopar.solvers.sharded``:

* ``linear`` — one two-level linear solve (chunk summaries in the proven compact structure,
  an all-gather of P of them, an O(P) fold, the local scan from the true start);
* ``deer`` / ``quasi-deer`` — Newton, each iteration one two-level linear solve, the residual
  and every stop decision global (``pmax``); the fallback chain as on one device (→ elk → the
  sequential pipeline);
* ``elk`` / ``quasi-elk`` — each damped step a parallel Kalman smoother whose filter and
  smoother scans are two-level associative scans of their elements (O(P·m·b²) gathered);
* ``sequential`` — the pipeline (P rounds of hand-offs: exact, not faster).

Integer leaves: the affine ones by a two-level elementwise scan (integer multiply-add is a
ring, so it stays exact), others by the pipeline. **Gradients** (``jax.custom_vjp``): the
implicit adjoint λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1} is a reverse linear recurrence, so the
``linear`` adjoint is the same two-level solve with the shard order reversed (each shard also
needs the next shard's first Jacobian: one ``ppermute`` of a compact factor); the
``sequential`` adjoint is the pipeline run backwards. Cotangents of values every shard shares
(the closed-over parameters, h0) are summed over the axis (``psum``); ``autodiff`` lets JAX
differentiate the exact forward (collectives have transposes).

Communication per linear solve: P · (floats of one compact transition + D) per shard, plus one
D-vector ``ppermute`` per shift — independent of T (``comm_floats``).

``on_mesh`` is the other entry point: inputs sharded along time over a mesh axis, wrapped in a
``shard_map`` of our own. T not divisible by P is padded at the end of the recurrence with
copies of the last input (causality: the padded steps come after every real one and cannot
change them); the padding is sliced off before returning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat
from .adjoint import get_adjoint, separable
from .dtypes import expand_cotangents, float_vjp, zeros_cotangent
from .emit import Info
from .plan import Plan
from .solvers import convergence as cv
from .solvers import sharded as sh
from .solvers.base import Problem, Stats
from .solvers.linear import linearize_steps
from .solvers.result import Result
from .structure import Diagonal

__all__ = ["build", "residual", "on_mesh", "time_axis_of", "comm_floats", "Axis"]

Axis = sh.Axis


def comm_floats(structure, D: int, P: int) -> float:
    """Numbers each shard receives in one two-level linear solve: the gathered summaries
    (P · (floats of a compact transition + D)) and one shifted boundary state (D)."""
    sst = sh.summary_structure(structure)
    return float(P * (sst.floats() + D) + D)


# ---- the forward solve -----------------------------------------------------------------------
def _chain(plan: Plan) -> tuple[str, ...]:
    return sh.CHAINS.get(plan.solver, (plan.solver,))


def _forward(plan: Plan, axis: Axis):
    """``forward(problem) -> (vs, Stats)`` of the planned solver in its sharded form."""
    name = plan.solver
    if name not in sh.SHARDED_SOLVERS:
        raise ValueError(
            f"solver={name!r} has no time-sharded form yet (sharded solvers: {', '.join(sh.SHARDED_SOLVERS)}). "
            "Pass one of those, or solver='auto'.")

    def forward(problem: Problem):
        if name == "sequential":
            return sh.sequential_solve(problem, axis)
        if name == "linear":
            L, D = problem.length, problem.v0.shape[0]
            b, a = linearize_steps(problem.f, problem.structure, jnp.zeros((L, D), problem.dtype), problem.xt)
            vs = sh.sharded_linear_scan(problem.structure, a, b, problem.v0, axis)
            return vs, Stats(jnp.asarray(1, jnp.int32), jnp.asarray(True))
        return sh.run_chain(problem, axis, sh.CHAINS[name])

    return forward


def _linear_cotangents(step, structure, consts, v0, xt, prev, g, axis: Axis):
    """The implicit adjoint by one reverse two-level linear solve (``autopar.adjoint.LinearAdjoint``
    sharded): m_t = J_{t+1}ᵀ, the last local one from the next shard's first J."""
    f = lambda v, x: step(consts, v, x)  # noqa: E731
    _, a = linearize_steps(f, structure, prev, xt)
    at = jax.vmap(structure.transpose, axis_size=prev.shape[0])(a)
    nxt = axis.from_next(jax.tree_util.tree_map(lambda x: x[0], at))
    last = axis.is_last()
    tail = jax.tree_util.tree_map(lambda n, x: jnp.where(last, x[-1], n)[None], nxt, at)
    m = jax.tree_util.tree_map(lambda x, t: jnp.concatenate([x[1:], t], 0), at, tail)
    back = dataclasses.replace(axis, reverse=not axis.reverse)
    flip = lambda x: jnp.flip(x, 0)  # noqa: E731
    lam = flip(sh.sharded_linear_scan(structure, jax.tree_util.tree_map(flip, m), flip(g), jnp.zeros_like(v0), back))
    F = jax.vmap(step, in_axes=(None, 0, 0))
    _, vjp = float_vjp(F, consts, prev, xt)
    (cts,) = vjp(lam)
    d_consts, d_prev, d_xt = expand_cotangents(cts, (consts, prev, xt))
    return d_consts, jnp.where(axis.is_first(), d_prev[0], 0), d_xt


def _sequential_cotangents(step, structure, consts, v0, xt, prev, g, axis: Axis):
    """The per-step adjoint (``autopar.adjoint.SequentialAdjoint``) as a backward pipeline."""
    floats = [c for c in jax.tree_util.tree_leaves(consts) if jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact)]
    n_const = len(floats)

    def body(carry, inp):
        c, d_consts = carry
        g_t, p_t, x_t = inp
        _, vjp = float_vjp(step, consts, p_t, x_t)
        (cts,) = vjp(g_t + c)
        dc, rest = cts[:n_const], cts[n_const:]
        n_v = 1 if jnp.issubdtype(p_t.dtype, jnp.inexact) else 0
        dv, dx = (rest[0] if n_v else jnp.zeros_like(c)), rest[n_v:]
        return (dv, [a + b for a, b in zip(d_consts, dc)]), dx

    zc = [jnp.zeros_like(c) for c in floats]

    def run(c):
        return jax.lax.scan(body, (c, zc), (g, prev, xt), reverse=True)

    back = dataclasses.replace(axis, reverse=not axis.reverse)
    (d_v, dc), dx = sh.pipeline(lambda c: run(c)[0][0], run, jnp.zeros_like(v0), back)
    return expand_cotangents(dc, consts), jnp.where(axis.is_first(), d_v, 0), expand_cotangents(dx, xt)


def _differentiable(forward, step, structure, backward: str, exact: bool, axis: Axis):
    """``forward(consts, v0, xt)`` with the sharded implicit adjoint as its VJP (``autodiff``: as is)."""
    if backward == "autodiff":
        return forward
    cot = _linear_cotangents if backward == "linear" else _sequential_cotangents

    @jax.custom_vjp
    def solve(consts, v0, xt):
        return forward(consts, v0, xt)

    def solve_fwd(consts, v0, xt):
        out = solve(consts, v0, xt)
        return out, (consts, v0, xt, out[0])

    def solve_bwd(res, cts):
        consts, v0, xt, vs = res
        g = cts[0]
        if isinstance(g, jax.custom_derivatives.SymbolicZero) or g is None:  # pragma: no cover
            g = jnp.zeros_like(vs)
        if vs.shape[0] == 0:
            return (jax.tree_util.tree_map(zeros_cotangent, consts), jnp.zeros_like(v0),
                    jax.tree_util.tree_map(zeros_cotangent, xt))
        prev = axis.shift(v0, vs)
        d_consts, d_v0, d_xt = cot(step, structure, consts, v0, xt, prev, g, axis)
        return d_consts, d_v0, d_xt

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


def _float_solve(rec, plan: Plan, axis: Axis):
    strategy = get_adjoint(plan.backward)
    structure = plan.structure
    run = _forward(plan, axis)

    def step(consts, v, xt):
        disc, x = xt
        return rec.step(consts, v, disc, x)[0]

    def primal(consts, v, xt):
        return rec.primal_step(consts, v, *xt)[0]

    solved = primal if strategy.implicit else step

    def forward(consts, v0, xt):
        f = lambda v, x: solved(consts, v, x)  # noqa: E731
        problem = Problem(f, v0, xt, structure, rec.length, plan.options, (rec.layout.split, rec.layout.join))
        vs, stats = run(problem)
        return vs, (jnp.asarray(stats.solver_index, jnp.int32), stats.iterations, stats.converged, stats.history,
                    jnp.asarray(stats.result, jnp.int32))

    exact = plan.solver in ("sequential", "linear")
    return _differentiable(forward, step, structure, plan.backward, exact, axis)


def _discrete(rec, plan: Plan, consts, v0, disc0, x_leaves, axis: Axis):
    """Integer / bool leaves across shards: affine ones by a two-level elementwise scan, others by
    the pipeline (as ``autopar.emit._discrete_trajectory`` on one device)."""
    if not disc0:
        return []
    L = rec.length
    v_dummy = jnp.zeros_like(v0)
    g = lambda disc, x: rec.step(consts, v_dummy, disc, x)[1]  # noqa: E731
    if plan.discrete == "affine-scan":
        zeros = [jnp.zeros_like(d) for d in disc0]
        ones = [jnp.ones_like(d) for d in disc0]

        def coeffs(x):
            b = g(zeros, x)
            return [g1 - b0 for g1, b0 in zip(g(ones, x), b)], b

        a, b = jax.vmap(coeffs, axis_size=L)(list(x_leaves))
        out = []
        for a_k, b_k, n0 in zip(a, b, disc0):
            n = int(np.prod(n0.shape, dtype=np.int64))
            vs = sh.sharded_linear_scan(Diagonal(n), a_k.reshape(L, n), b_k.reshape(L, n), n0.reshape(n), axis)
            out.append(vs.reshape(b_k.shape))
        return out

    def final(d):
        return jax.lax.scan(lambda c, x: (g(c, x), None), d, list(x_leaves), length=L)[0]

    def full(d):
        return jax.lax.scan(lambda c, x: (g(c, x),) * 2, d, list(x_leaves), length=L)[1]

    return sh.pipeline(final, full, list(disc0), axis)


def build(rec, plan: Plan, axis: Axis):
    """One shard's program: ``run(consts, h0_leaves, x_leaves) -> (state leaves (L, ...), Info)``
    (as ``autopar.emit.build``; called inside ``shard_map`` over ``axis.name``)."""
    layout = rec.layout
    chain = _chain(plan)
    L = rec.length

    def run(consts, h0_leaves, x_leaves):
        # shard_map(check_vma=False) sums the cotangents of inputs every shard shares (the
        # parameters, h0) over the axis, so each shard's adjoint returns its own contribution.
        if any(axis.name in _compat.varying_axes(x) for x in x_leaves):
            raise ValueError(
                f"axis_name={axis.name!r}: call the parallelized cell inside jax.shard_map(..., check_vma=False). "
                "autopar evaluates the cell's traced program on each shard's chunk, and shard_map's varying-axis "
                "type checks (check_vma=True) reject programs traced outside it; or pass the sharded xs to "
                "fn(h0, xs) directly (entry point 1), which builds its own shard_map.")
        v0, disc0 = layout.ravel(h0_leaves)
        if L == 0:
            raise ValueError("a time-sharded solve needs at least one step per shard")
        if not separable(rec):
            def final(c):
                return jax.lax.scan(lambda c, x: (tuple(_joint(rec, consts, c, x)), None), c, list(x_leaves))[0]

            def full(c):
                return jax.lax.scan(lambda c, x: (tuple(_joint(rec, consts, c, x)),) * 2, c, list(x_leaves))[1]

            vs, discs = sh.pipeline(final, full, (v0, list(disc0)), axis)
            stats = (jnp.asarray(0, jnp.int32), jnp.asarray(L * axis.size, jnp.int32), jnp.asarray(True), None,
                     jnp.asarray(Result.converged, jnp.int32))
        else:
            discs = _discrete(rec, plan, consts, v0, disc0, x_leaves, axis)
            disc_prev = [axis.shift(d0, d) for d0, d in zip(disc0, discs)]
            solve = _float_solve(rec, plan, axis)
            vs, stats = solve(list(consts), v0, (disc_prev, list(x_leaves)))
        leaves = jax.vmap(layout.unravel)(vs, list(discs))
        finite = axis.pmax(jnp.any(~jnp.isfinite(vs)).astype(jnp.int32)) == 0
        result = jnp.where(finite, stats[4], jnp.asarray(Result.nonfinite, jnp.int32))
        info = Info(stats[0], stats[1], stats[2] & finite, jnp.asarray(jnp.nan, jnp.float32), stats[3], result, chain,
                    plan.solver, plan.backward)
        return leaves, info

    return run


def _joint(rec, consts, carry, x):
    v, disc = carry
    v, disc = rec.step(consts, v, disc, x)
    return v, disc


def residual(rec, plan: Plan, consts, h0_leaves, hs_leaves, x_leaves, axis: Axis):
    """``autopar.emit.residual`` of a sharded trajectory: the global (pmax) per-element residual."""
    consts, h0_leaves, hs_leaves, x_leaves = jax.lax.stop_gradient(
        (list(consts), list(h0_leaves), list(hs_leaves), list(x_leaves)))
    v0, disc0 = rec.layout.ravel(list(h0_leaves))
    vs, discs = jax.vmap(rec.layout.ravel)(list(hs_leaves))
    prev = axis.shift(v0, vs)
    disc_prev = [axis.shift(d0, d) for d0, d in zip(disc0, discs)]
    f = lambda v, xt: rec.primal_step(consts, v, *xt)[0]  # noqa: E731
    fv, a = linearize_steps(f, plan.structure, prev, (disc_prev, list(x_leaves)))
    return axis.pmax(cv.stage_residual(plan.structure, a, prev, vs, fv))


# ---- entry point 1: inputs sharded along time ------------------------------------------------
def time_axis_of(xs) -> tuple[Any, Any] | None:
    """(mesh, axis name) when the concrete ``xs`` leaves are sharded along their time axis (axis 0)
    over one mesh axis by a ``NamedSharding``; None otherwise (traced or unsharded inputs)."""
    found = None
    for leaf in jax.tree_util.tree_leaves(xs):
        s = getattr(leaf, "sharding", None)
        if isinstance(leaf, _compat.Tracer) or not isinstance(s, jax.sharding.NamedSharding):
            continue
        spec = tuple(s.spec) + (None,) * (np.ndim(leaf) - len(s.spec))
        if not spec or spec[0] is None:
            continue
        name = spec[0]
        if isinstance(name, tuple):
            if len(name) != 1:
                raise ValueError(f"xs is sharded along time over several mesh axes {name}; shard it over one.")
            name = name[0]
        if found is not None and (found[1] != name or found[0] != s.mesh):
            raise ValueError(f"xs leaves are sharded along time over different mesh axes ({found[1]!r}, {name!r}).")
        found = (s.mesh, name)
    return found


def _spec(leaf, mesh, skip: str | None = None):
    """The partition spec of a concrete leaf on ``mesh`` (P() for a traced or foreign one)."""
    P = jax.sharding.PartitionSpec
    s = getattr(leaf, "sharding", None)
    if isinstance(leaf, _compat.Tracer) or not isinstance(s, jax.sharding.NamedSharding) or s.mesh != mesh:
        return P()
    return s.spec


def _place(a, mesh, spec):
    """``a`` laid out as ``spec`` on ``mesh`` inside a jit: a sharding constraint on Auto axes,
    ``jax.reshard`` on Explicit ones (``jax.make_mesh``'s default)."""
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.reshard(a, sharding) if _explicit(mesh) else jax.lax.with_sharding_constraint(a, sharding)


def _explicit(mesh) -> bool:
    return any(str(t).endswith("Explicit") for t in getattr(mesh, "axis_types", ()))


def on_mesh(fn, mesh, axis_name: str, h0, xs, *, length=None, reverse=False, return_info=False):
    """``fn(h0, xs)`` with time sharded over ``mesh``'s axis ``axis_name`` (entry point 1).

    ``fn`` is a ``Parallelized``; the solve runs inside ``jax.shard_map`` as ``fn``'s sibling with
    ``axis_name`` set. Other mesh axes of the inputs' shardings (batch, heads) are kept: xs
    leaves keep their spec with time over ``axis_name``; h0 keeps its own; the result is
    sharded as xs along time and as h0 elsewhere.
    """
    P = jax.sharding.PartitionSpec
    Pn = int(mesh.shape[axis_name])
    leaves, treedef = jax.tree_util.tree_flatten(xs)
    if not leaves:
        raise ValueError("a time-sharded call needs inputs xs with a time axis (xs=None cannot be sharded)")
    T = int(np.shape(leaves[0])[0])
    pad = (-T) % Pn
    x_specs = []
    for leaf in leaves:
        sp = tuple(_spec(leaf, mesh)) + (None,) * (np.ndim(leaf) - len(tuple(_spec(leaf, mesh))))
        x_specs.append(P(axis_name, *sp[1:]))
    h_leaves, htree = jax.tree_util.tree_flatten(h0)
    h_specs = [_spec(l, mesh) for l in h_leaves]
    inner = fn._sharded_sibling(axis_name)

    def body(h_l, x_l):
        hh = jax.tree_util.tree_unflatten(htree, h_l)
        xx = jax.tree_util.tree_unflatten(treedef, x_l)
        if not return_info:
            return jax.tree_util.tree_leaves(inner(hh, xx, reverse=reverse))
        hs, info = inner(hh, xx, reverse=reverse, return_info=True)
        return jax.tree_util.tree_leaves(hs), info

    def out_spec(sp):
        return P(axis_name, *tuple(sp))

    hs_specs = [out_spec(s) for s in h_specs]
    smap = jax.shard_map(body, mesh=mesh, in_specs=(h_specs, x_specs),
                         out_specs=(hs_specs, P()) if return_info else hs_specs, check_vma=False)

    def program(h_l, x_l):
        if pad:  # identity-free padding: repeat the last input after the recurrence's last step
            edge = (lambda a: jnp.concatenate([jnp.repeat(a[:1], pad, 0), a], 0)) if reverse else (
                lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)], 0))
            x_l = [edge(a) for a in x_l]
        x_l = [_place(a, mesh, s) for a, s in zip(x_l, x_specs)]
        out = smap(h_l, x_l)
        hs, info = out if return_info else (out, None)
        if pad:
            if _explicit(mesh):  # JAX cannot slice an Explicit-sharded axis unevenly: gather it first
                hs = [_place(h, mesh, P(None, *tuple(s))) for h, s in zip(hs, h_specs)]
            hs = [h[pad:] if reverse else h[:T] for h in hs]
        return hs, info

    key = (mesh, axis_name, tuple(map(str, x_specs)), tuple(map(str, h_specs)), bool(reverse), T, bool(return_info))
    jitted = fn._mesh_programs.get(key)
    if jitted is None:
        jitted = fn._mesh_programs[key] = jax.jit(program)
    hs, info = jitted(h_leaves, leaves)
    hs = jax.tree_util.tree_unflatten(htree, hs)
    return (hs, info) if return_info else hs


def explain_on_mesh(fn, mesh, axis_name: str, h0, xs, *, length=None):
    """``fn.explain`` for a time-sharded call: the report of the program each shard runs (traced
    on one shard's chunk inside ``shard_map``; nothing is compiled or run)."""
    P = jax.sharding.PartitionSpec
    leaves, treedef = jax.tree_util.tree_flatten(xs)
    Pn = int(mesh.shape[axis_name])
    T = int(np.shape(leaves[0])[0])
    Tp = T + (-T) % Pn
    x_l = [jax.ShapeDtypeStruct((Tp, *np.shape(a)[1:]), jnp.result_type(a)) for a in leaves]
    h_l, htree = jax.tree_util.tree_flatten(h0)
    h_specs = [_spec(l, mesh) for l in h_l]
    x_specs = [P(axis_name, *(tuple(_spec(a, mesh)) + (None,) * np.ndim(a))[1:np.ndim(a)]) for a in leaves]
    inner = fn._sharded_sibling(axis_name)
    out = []

    def body(h, x):
        out.append(inner.explain(jax.tree_util.tree_unflatten(htree, h), jax.tree_util.tree_unflatten(treedef, x)))
        return h

    jax.eval_shape(jax.shard_map(body, mesh=mesh, in_specs=(h_specs, x_specs), out_specs=h_specs, check_vma=False),
                   [jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in h_l], x_l)
    return out[0]
