"""Cost facts: flops of one step, read off the jaxpr (no compilation)."""

from __future__ import annotations

from autopar.costs import step_flops

from .base import Pass

__all__ = ["CostPass"]


class CostPass(Pass):
    """Provides ``step_flops``: approximate flops of one evaluation of the step."""

    name = "cost"
    provides = ("step_flops",)

    def run(self, rec, facts):
        return {"step_flops": max(step_flops(rec.step_jaxpr), 1.0)}
