"""The sequential solver: ``jax.lax.scan``. Always exact, the fallback of every other solver,
and on a CPU often the fastest for cheap cells."""

from __future__ import annotations

import jax

from .base import Problem, Solver, converged_stats, register_solver


def sequential_trajectory(f, v0, xt, length=None):
    """v_1..v_T of v_t = f(v_{t-1}, xt_t) by lax.scan (``length`` needed when ``xt`` has no leaves)."""
    def body(v, x):
        v = f(v, x)
        return v, v

    return jax.lax.scan(body, v0, xt, length=length)[1]


@register_solver
class Sequential(Solver):
    name = "sequential"
    parallel = False

    def applies(self, facts, rec):
        return True, "always exact"

    def solve(self, problem: Problem):
        return sequential_trajectory(problem.f, problem.v0, problem.xt, problem.length), converged_stats(problem.length)
