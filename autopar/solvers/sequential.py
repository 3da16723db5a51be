"""The sequential solver: ``jax.lax.scan``. Always exact, the fallback of every other solver,
and on a CPU often the fastest for cheap cells."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autopar import costs, hoist

from . import pricing
from .base import Problem, Solver, converged_stats, register_solver


def sequential_trajectory(f, v0, xt, length=None, leaves=None, unroll=1, hoisting=True, reverse=False,
                          lagged=False):
    """v_1..v_T of v_t = f(v_{t-1}, xt_t) by lax.scan (``length`` needed when ``xt`` has no leaves;
    ``unroll`` as lax.scan's, from ``autopar.scan(..., unroll=)``).

    ``hoisting``: the part of ``f`` that reads no state is evaluated for all T steps before the
    loop when ``autopar.hoist`` finds that worthwhile (an input projection, an input-dependent
    gate); the loop then runs only the state-dependent rest. ``reverse``: as lax.scan's (the
    sequential adjoint's loop).

    With ``leaves = (split, join)`` the loop carries the state leaves in their own shapes: the
    reshapes around ``f`` then cancel inside the loop body (a flat carry cost up to 1.5× on a
    matrix state), and the flat trajectory is assembled once at the end.

    ``lagged``: write each state one iteration late (``_lagged_scan``); ``"auto"``: where
    ``lagged_write_pays`` says so for the loop body.
    """
    moved = hoist.hoisted(f, v0, xt) if hoisting else None
    if moved is not None:
        f, xt = moved
    if lagged == "auto":
        lagged = lagged_write_pays(f, v0, xt)
    loop = _lagged_scan if lagged else _scan
    if leaves is not None:
        split, join = leaves
        parts = loop(lambda c, x: split(f(join(c), x)), split(v0), xt, length, unroll, reverse)
        return jax.vmap(join)(parts)
    return loop(f, v0, xt, length, unroll, reverse)


def lagged_write_pays(f, v0, xt) -> bool:
    """Whether the loop ``v ← f(v, x_t)`` should write its states one iteration late on this
    backend: ``costs.lagged_write_pays`` of its body, traced (never compiled)."""
    x0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), xt)
    v_avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), v0)
    closed = jax.make_jaxpr(f)(v_avals, x0)
    return costs.lagged_write_pays(closed, len(jax.tree.leaves(v0)), costs.constants_for(jax.default_backend()))


def _scan(step, c0, xt, length, unroll, reverse):
    """The states of ``c ← step(c, x_t)``: a lax.scan whose output is each new carry."""
    def body(c, x):
        c = step(c, x)
        return c, c

    return jax.lax.scan(body, c0, xt, length=length, unroll=unroll, reverse=reverse)[1]


def _lagged_scan(step, c0, xt, length, unroll, reverse):
    """``_scan``'s states, each written one iteration late: iteration t writes its *incoming*
    carry (the state after step t − 1) into a carried trajectory buffer, and the last state is
    written after the loop. The write then reads a loop parameter, so XLA cannot fuse the step
    into the trajectory's dynamic-update-slice and compute it twice, as it does for some bodies
    (the per-step recompute runs unvectorised: an elementwise chain of 12 transcendentals on 16
    floats cost 2.5 µs a step that way, 0.57 lagged)."""
    T = int(length) if length is not None else int(jax.tree.leaves(xt)[0].shape[0])
    ys = jax.tree.map(lambda c: jnp.zeros((T,) + jnp.shape(c), jnp.result_type(c)), c0)
    if T == 0:
        return ys
    back = -1 if not reverse else 1  # the row of the state the incoming carry is

    def body(carry, inp):
        c, ys = carry
        t, x = inp
        row = jnp.clip(t + back, 0, T - 1)  # the first iteration writes c0 where the next overwrites it
        ys = jax.tree.map(lambda y, v: jax.lax.dynamic_update_index_in_dim(y, v, row, 0), ys, c)
        return (step(c, x), ys), None

    (c, ys), _ = jax.lax.scan(body, (c0, ys), (jnp.arange(T), xt), length=T, unroll=unroll, reverse=reverse)
    last = T - 1 if not reverse else 0
    return jax.tree.map(lambda y, v: y.at[last].set(v), ys, c)


@register_solver
class Sequential(Solver):
    name = "sequential"
    parallel = False
    exact = True
    options = frozenset({"unroll"})
    description = "lax.scan: always exact; T dependent steps"

    def applies(self, facts, rec):
        return True, "always exact"

    def cost(self, facts, rec, K):
        """T dependent steps, each ``pricing.seq_step_ops`` + its flops at ``K.seq_flops`` + the
        write of its state v_t at ``costs.loop_bandwidth`` and the read of its slice x_t at
        ``K.bytes_per_s`` (a loop's strided write is its dear traffic: measured, a ``lax.scan``
        of a·h + x at D = 64 pays ~48 ns a step to return its states, ~12 for all of its
        reads and work), plus ``K.loop_thunk_time`` when XLA:CPU runs the loop as thunks
        (``pricing.loop_thunks``).

        With ``facts["hoisted"]`` (``autopar.hoist``) the loop runs the state-dependent part only,
        reading its residuals, and the rest is one vectorised pass over T at ``K.par_flops`` (and
        ``K.row_op_time`` per equation per step)."""
        T, D, isz, cplx, xb, _ = pricing.sizes(rec)
        split = facts.get("hoisted")
        loop_bw = costs.loop_bandwidth(K)
        step = K.step_overhead + pricing.loop_thunks(facts, rec, split, K)
        if split is None:
            fl = pricing.flops(facts, cplx)
            t = T * (step + pricing.seq_step_ops(facts, rec, K) + fl / K.seq_flops
                     + D * isz / loop_bw + xb / K.bytes_per_s)
            return pricing.Prediction(t, T * D * isz, 1.0, T * fl, float(T))
        real, cx = split.inner_ops
        rb = split.residual_floats * isz
        loop = (step + (real + K.complex_op_factor * cx) * K.op_overhead
                + split.inner_flops * cplx / K.seq_flops + D * isz / loop_bw + rb / K.bytes_per_s)
        outer = (split.outer_flops * cplx / K.par_flops + (xb + rb) / K.bytes_per_s
                 + split.outer_row_ops * K.row_op_time)
        fl = (split.inner_flops + split.outer_flops) * cplx
        return pricing.Prediction(T * (loop + outer), T * (D * isz + rb), 1.0, T * fl, float(T))

    def solve(self, problem: Problem):
        vs = sequential_trajectory(problem.f, problem.v0, problem.xt, problem.length, problem.leaves,
                                   unroll=problem.options.get("unroll", 1), lagged="auto")
        return vs, converged_stats(problem.length)
