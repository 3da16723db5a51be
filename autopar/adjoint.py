r"""How the gradient of a solve is computed: the adjoint strategies the planner picks from.

**Implicit adjoint.** At the solution v_t = f(v_{t-1}, x_t), the cotangents ḡ_t of the
trajectory give adjoint states

    λ_T = ḡ_T,    λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1},

one *linear* recurrence backward in time whatever the forward solver was. Then
∂L/∂v₀ = J_1ᵀ λ_1 and the cotangents of x_t and of the closed-over constants come from one
VJP of the vmapped step at (v_{t-1}, x_t) with λ_t. The solver's iterations are never
differentiated and no iterate is stored: the residuals are the inputs and the trajectory.

Strategies (``BACKWARD_MODES`` is ``"auto"`` and their names, in this order):

* ``linear`` — the adjoint recurrence as one structure-aware reverse associative scan of the
  transposed compact factors;
* ``sequential`` — a reverse ``lax.scan`` of per-step VJPs (the cell's own AD rules — custom_vjp,
  rounding — apply per step, as in lax.scan's gradient);
* ``autodiff`` — no implicit adjoint: JAX differentiates the exact forward solver itself, which
  supports forward mode and ``jax.hessian`` at lax.scan's memory cost. Never chosen by ``auto``.

Each has ``applies(facts, rec, blockers, solver) -> (ok, reason)``, ``cost(facts, rec, K) ->
Prediction`` and ``apply(forward, step, structure, exact) -> solve``, which makes the forward
solve ``forward(consts, v0, xt) -> (vs, stats)`` differentiable.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from .dtypes import expand_cotangents, float_vjp, zeros_cotangent
from .registry import Registry
from .solvers import get_solver, pricing, solver_names
from .solvers.linear import linear_scan, linearize_steps

__all__ = ["Adjoint", "register_adjoint", "get_adjoint", "adjoint_names", "backward_modes", "BACKWARD_MODES",
           "per_step_adjoint", "separable"]


def separable(rec: Any) -> bool:
    """Whether the float recurrence can be solved and differentiated on its own: False when integer
    leaves read the float state or there is no float state (then one lax.scan of the joint state,
    differentiated by JAX, is the exact way)."""
    return not (rec.discrete_depends_on_float or rec.size == 0)


def per_step_adjoint(facts: Any) -> str:
    """Why the adjoint must run the cell's own VJP step by step (as lax.scan's gradient does), or "".

    A custom_vjp's backward rule, and the AD rules of rounding (which round the tangents and
    cotangents themselves), are not a linear map a compact J can hold: the linear adjoint reads J
    from forward mode and would give the exact derivative of an unrounded / unclipped cell. Nor
    are the rules of an out-of-bounds gather / scatter under ``promise_in_bounds``, whose forward
    and reverse derivatives differ (lax.scan's gradient is the reverse one)."""
    why = []
    if facts.get("custom_vjp"):
        why.append(f"the cell calls a custom_vjp ({', '.join(facts['custom_vjp'])}) on the state")
    if facts.get("rounding"):
        why.append(f"the cell rounds a state-dependent value ({', '.join(facts['rounding'])})")
    if facts.get("unsafe_indexing"):
        why.append(f"the cell indexes the state with indices not proven in bounds "
                   f"({', '.join(facts['unsafe_indexing'])}: pass mode='clip' or 'fill' to index soundly)")
    return "; ".join(why) + ": its AD rules apply per step, as in lax.scan's gradient" if why else ""


class Adjoint:
    """An adjoint strategy. ``implicit`` ones supply the VJP themselves (the forward solver then
    runs the primal step, custom_vjp calls inlined); otherwise JAX differentiates the forward
    solver, which then runs the cell's own rules. ``auto`` ones are candidates of ``backward="auto"``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # the planner's reason text: "<description> predicted …"
    implicit: ClassVar[bool] = True
    auto: ClassVar[bool] = True

    def applies(self, facts: Any, rec: Any, blockers: list[str], solver: Any) -> tuple[bool, str]:
        """(usable, why not) after ``solver`` on this recurrence; ``blockers`` are
        ``autopar.plan.parallel_blockers``."""
        return True, ""

    def cost(self, facts: Any, rec: Any, K: Any) -> pricing.Prediction:
        raise NotImplementedError

    def cotangents(self, step, structure, consts, v0, xt, prev, g):
        """(d_consts, d_v0, d_xt) from the trajectory's cotangents ``g`` (``prev`` = v_0..v_{T−1})."""
        raise NotImplementedError

    def apply(self, forward: Callable, step: Callable, structure: Any, exact: bool) -> Callable:
        """``forward`` with ``cotangents`` as its VJP (a ``jax.custom_vjp``).

        An ``exact`` forward solver (lax.scan, one linear scan) may be differentiated directly when
        an outer transformation differentiates this rule (jax.hessian = jacfwd∘jacrev); an iterative
        solver re-enters ``solve`` so that every order of reverse mode is implicit too."""

        @jax.custom_vjp
        def solve(consts, v0, xt):
            return forward(consts, v0, xt)

        def solve_fwd(consts, v0, xt):
            out = forward(consts, v0, xt) if exact else solve(consts, v0, xt)
            return out, (consts, v0, xt, out[0])

        def solve_bwd(res, cts):
            consts, v0, xt, vs = res
            g = cts[0]
            if isinstance(g, jax.custom_derivatives.SymbolicZero) or g is None:  # pragma: no cover
                g = jnp.zeros_like(vs)
            if vs.shape[0] == 0:  # T = 0: nothing depends on the inputs
                return (jax.tree_util.tree_map(zeros_cotangent, consts), jnp.zeros_like(v0),
                        jax.tree_util.tree_map(zeros_cotangent, xt))
            prev = jnp.concatenate([v0[None], vs[:-1]], axis=0)
            return self.cotangents(step, structure, consts, v0, xt, prev, g)

        solve.defvjp(solve_fwd, solve_bwd)
        return solve


_ADJOINTS = Registry("adjoint strategy")


def register_adjoint(adjoint: Adjoint | type, *, override: bool = False):
    """Add a strategy (an instance, or a class to instantiate; usable as a class decorator)."""
    inst = adjoint() if isinstance(adjoint, type) else adjoint
    _ADJOINTS.add(inst.name, inst, override=override)
    return adjoint


def adjoint_names() -> list[str]:
    return list(_ADJOINTS)


def backward_modes() -> tuple[str, ...]:
    """The values ``backward=`` accepts: ``"auto"`` and every registered strategy."""
    return ("auto", *_ADJOINTS)


def get_adjoint(name: str) -> Adjoint:
    if name not in _ADJOINTS:
        raise ValueError(f"`backward` must be one of {backward_modes()}; got {name!r}.")
    return _ADJOINTS[name]


@register_adjoint
class LinearAdjoint(Adjoint):
    """λ by one reverse structured scan: J_t read at the solution in the proven structure, transposed."""

    name = "linear"
    description = "reverse linear scan"

    def applies(self, facts, rec, blockers, solver):
        per_step = per_step_adjoint(facts)
        if per_step:
            return False, per_step
        if blockers:
            return False, "; ".join(blockers)
        return True, ""

    def cost(self, facts, rec, K):
        """One extraction, one scan and the vmapped VJP of the step (≈ 3 step evaluations)."""
        T, D, isz, cplx, xb, _ = pricing.sizes(rec)
        st = facts["structure"]
        fl = pricing.flops(facts, cplx)
        t_ex, w_ex = pricing.extraction(T, D, fl, st, isz, xb, K)
        t_sc, w_sc = pricing.scan(T, D, st, isz, cplx, K)
        t_vjp = 3.0 * T * fl / K.par_flops + T * (2 * xb + 3 * D * isz) / K.bytes_per_s
        mem = 3.0 * T * (st.floats() + D) * isz + T * xb
        return pricing.Prediction(K.parallel_overhead + t_ex + t_sc + t_vjp, mem, 1.0, w_ex + w_sc + 3 * T * fl,
                                  float(pricing.levels(T)))

    def cotangents(self, step, structure, consts, v0, xt, prev, g):
        f = lambda v, x: step(consts, v, x)  # noqa: E731
        _, a = linearize_steps(f, structure, prev, xt)  # J_1..J_T at the solution
        at = jax.vmap(structure.transpose, axis_size=prev.shape[0])(a)
        # λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1}: reverse scan with factor M_t = J_{t+1}ᵀ (M_T unused, λ_{T+1} = 0)
        m = jax.tree_util.tree_map(lambda x: jnp.concatenate([x[1:], x[-1:]], axis=0), at)
        lam = linear_scan(structure, m, g, jnp.zeros_like(v0), reverse=True)
        F = jax.vmap(step, in_axes=(None, 0, 0))
        _, vjp = float_vjp(F, consts, prev, xt)
        (cts,) = vjp(lam)
        d_consts, d_prev, d_xt = expand_cotangents(cts, (consts, prev, xt))
        return d_consts, d_prev[0], d_xt


def _sequential_cost(facts, rec, K) -> pricing.Prediction:
    """A reverse lax.scan: each step one VJP (≈ 3 step evaluations) and the accumulation of the
    consts' cotangents. The loop body does not fuse like a forward step: it is priced per VJP equation."""
    T, D, isz, cplx, xb, const_floats = pricing.sizes(rec)
    fl = pricing.flops(facts, cplx)
    body = max(2.0 * pricing.seq_step_ops(facts, rec, K), facts.get("vjp_eqns", 0) * K.vjp_eqn_time * cplx)
    per = (K.step_overhead + body + (3.0 * fl + const_floats * cplx) / K.seq_flops
           + (2 * D * isz + 2 * xb) / K.bytes_per_s)
    return pricing.Prediction(T * per, 2.0 * T * D * isz + T * xb, 1.0, T * (3 * fl + const_floats), float(T))


@register_adjoint
class SequentialAdjoint(Adjoint):
    """λ by a reverse lax.scan of the cell's own per-step VJPs."""

    name = "sequential"
    description = "reverse lax.scan"

    def cost(self, facts, rec, K):
        return _sequential_cost(facts, rec, K)

    def cotangents(self, step, structure, consts, v0, xt, prev, g):
        floats = [c for c in jax.tree_util.tree_leaves(consts) if jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact)]
        n_const = len(floats)

        def body(carry, inp):
            c, d_consts = carry  # c = J_{t+1}ᵀ λ_{t+1}
            g_t, p_t, x_t = inp
            _, vjp = float_vjp(step, consts, p_t, x_t)
            (cts,) = vjp(g_t + c)
            dc, rest = cts[:n_const], cts[n_const:]
            n_v = 1 if jnp.issubdtype(p_t.dtype, jnp.inexact) else 0
            dv, dx = (rest[0] if n_v else jnp.zeros_like(c)), rest[n_v:]
            return (dv, [a + b for a, b in zip(d_consts, dc)]), dx

        zc = [jnp.zeros_like(c) for c in floats]
        (d_v0, dc), dx = jax.lax.scan(body, (jnp.zeros_like(v0), zc), (g, prev, xt), reverse=True)
        return expand_cotangents(dc, consts), d_v0, expand_cotangents(dx, xt)


@register_adjoint
class AutodiffAdjoint(Adjoint):
    """No implicit adjoint: JAX differentiates the (exact) forward solver itself."""

    name = "autodiff"
    description = "reverse mode through the forward solver"
    implicit = False
    auto = False

    def applies(self, facts, rec, blockers, solver):
        per_step = per_step_adjoint(facts)
        if per_step and solver.name != "sequential":
            return False, f"{per_step}, and JAX would differentiate {solver.name!r}'s forward-mode Jacobians"
        if solver.exact:
            return True, ""
        exact = [n for n in solver_names() if get_solver(n).exact]
        return False, (f"it differentiates through the forward solver, which is only exact for {exact}; the "
                       f"planned solver is {solver.name!r}. Pass an exact solver (solver='sequential', or 'linear' "
                       "for an affine cell) with backward='autodiff', or keep backward='auto' for the implicit adjoint")

    def cost(self, facts, rec, K):
        """Priced as the reverse lax.scan of per-step VJPs (what it is after the sequential solver)."""
        return _sequential_cost(facts, rec, K)

    def apply(self, forward, step, structure, exact):
        return forward


#: The values ``backward=`` accepts (``backward_modes()`` also counts strategies registered later).
BACKWARD_MODES = backward_modes()
