"""Cost facts: flops of one step, read off the jaxpr (no compilation)."""

from __future__ import annotations

import numpy as np

from autopar.costs import count_eqns, loop_body_bytes, row_ops, step_flops, step_ops, tangent_flops, vjp_step
from autopar.hoist import split_step

from .base import Pass

__all__ = ["CostPass"]


class CostPass(Pass):
    """Provides ``step_flops`` (approximate flops of one step), ``step_ops`` ((real, complex) counts
    of the step's non-fusable kernels, ``costs.step_ops``: the sequential scan pays a launch per
    kernel per step), ``vjp_eqns`` / ``vjp_ops`` / ``vjp_flops`` (equations, non-fusable ops and
    flops of one step's VJP w.r.t. the state, ``costs.vjp_step``: the body of the sequential
    adjoint's reverse scan; ``vjp_hoisted_flops`` the part of it that loop moves out), ``hoisted``
    (the loop body and the vectorised outer part when the sequential loop moves the state-independent work out of it, ``autopar.hoist``; None when it
    does not), ``tangent_flops`` (flops of one JVP of the step w.r.t. the state, which prices a
    Jacobian extraction), ``row_ops`` / ``tangent_row_ops`` (equations a vmapped evaluation of
    the step runs over T rows, ``costs.row_ops``, and those a tangent pass runs) and
    ``loop_body_bytes`` (bytes an iteration of the sequential loop touches, ``costs.loop_body_bytes``
    of its body: the hoisted inner part when there is one). The planner
    reads these facts instead of walking the jaxpr itself."""

    name = "cost"
    provides = ("step_flops", "step_ops", "vjp_eqns", "vjp_ops", "vjp_flops", "tangent_flops", "hoisted",
                "vjp_hoisted_flops", "vjp_residual_floats", "row_ops", "tangent_row_ops", "loop_body_bytes")

    def run(self, rec, facts):
        try:
            n_vjp, vjp_ops, vjp_fl, vjp_out, vjp_res = _vjp_loop(rec) if rec.size else (0, (0.0, 0.0), 0.0, 0.0, 0)
        except Exception:  # noqa: BLE001 - a cell JAX cannot differentiate: no gradient to price
            n_vjp, vjp_ops, vjp_fl, vjp_out, vjp_res = 0, (0.0, 0.0), 0.0, 0.0, 0
        hoisted = _hoisted(rec)
        return {"step_flops": max(step_flops(rec.step_jaxpr), 1.0), "step_ops": step_ops(rec.step_jaxpr),
                "vjp_eqns": n_vjp, "vjp_ops": vjp_ops, "vjp_flops": vjp_fl, "vjp_hoisted_flops": vjp_out,
                "vjp_residual_floats": vjp_res,
                "tangent_flops": tangent_flops(rec.step_jaxpr), "hoisted": hoisted,
                "row_ops": row_ops(rec.step_jaxpr), "tangent_row_ops": row_ops(rec.step_jaxpr, n_state=1),
                "loop_body_bytes": loop_body_bytes(hoisted.inner if hoisted is not None else rec.step_jaxpr)}


def _vjp_loop(rec):
    """(equations, ops, flops) of the sequential adjoint's loop body, the flops it moves out and
    the residual floats a step then reads (``autopar.hoist``, as ``SequentialAdjoint`` runs it:
    inputs ḡ_t, v_{t−1}, x_t; without a split it reads v_{t−1} and x_t)."""
    closed = vjp_step(rec)
    split = split_step(closed, 1)
    if split is not None and split.worthwhile(extra_input_floats=int(rec.size)):  # the loop also slices ḡ_t
        return (count_eqns(split.inner), split.inner_ops, split.inner_flops, split.outer_flops,
                split.residual_floats)
    jp = closed.jaxpr  # the loop slices only the inputs the body reads (v_{t−1}, x_t; XLA drops the rest)
    read = {id(v) for e in jp.eqns for v in e.invars} | {id(v) for v in jp.outvars}
    per_step = sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in jp.invars[1:] if id(v) in read)
    return count_eqns(closed), step_ops(closed), step_flops(closed), 0.0, per_step


def _hoisted(rec):
    """The split the sequential loop makes of the step (``hoist.split_step`` of output 0, the
    float state, as ``solvers.sequential`` sees it), or None when it keeps the step whole."""
    split = split_step(rec.step_jaxpr, 1, n_outputs=1)
    return split if split is not None and split.worthwhile() else None
