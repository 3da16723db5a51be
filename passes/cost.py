"""Cost facts: flops of one step, read off the jaxpr (no compilation)."""

from __future__ import annotations

from autopar.costs import step_flops, step_ops, tangent_flops, vjp_step

from .base import Pass

__all__ = ["CostPass"]


class CostPass(Pass):
    """Provides ``step_flops`` (approximate flops of one step), ``step_ops`` ((real, complex) counts
    of the step's non-fusable kernels, ``costs.step_ops``: the sequential scan pays a launch per
    kernel per step), ``vjp_eqns`` / ``vjp_ops`` / ``vjp_flops`` (equations, non-fusable ops and
    flops of one step's VJP w.r.t. the state, ``costs.vjp_step``: the body of the sequential
    adjoint's reverse scan) and ``tangent_flops`` (flops of one JVP of the step w.r.t. the state, which prices a
    Jacobian extraction). The planner reads these facts instead of walking the jaxpr itself."""

    name = "cost"
    provides = ("step_flops", "step_ops", "vjp_eqns", "vjp_ops", "vjp_flops", "tangent_flops")

    def run(self, rec, facts):
        try:
            n_vjp, vjp_ops, vjp_fl = vjp_step(rec) if rec.size else (0, (0.0, 0.0), 0.0)
        except Exception:  # noqa: BLE001 - a cell JAX cannot differentiate: no gradient to price
            n_vjp, vjp_ops, vjp_fl = 0, (0.0, 0.0), 0.0
        return {"step_flops": max(step_flops(rec.step_jaxpr), 1.0), "step_ops": step_ops(rec.step_jaxpr),
                "vjp_eqns": n_vjp, "vjp_ops": vjp_ops, "vjp_flops": vjp_fl,
                "tangent_flops": tangent_flops(rec.step_jaxpr)}
