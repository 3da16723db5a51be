r"""How a solve is differentiated: the adjoint strategies the planner picks from.

**Forward mode.** At the solution v_t = f(v_{t-1}, x_t; θ) a tangent (θ̇, v̇₀, ẋ) gives

    ṽ_t = J_t ṽ_{t−1} + b_t,    b_t = ∂f/∂θ θ̇ + ∂f/∂x_t ẋ_t (+ J_1 v̇₀ at t = 1),

i.e. L ṽ = b with (L w)_t = w_t − J_t w_{t−1}: one *linear* recurrence forward in time,
whatever the forward solver was.

**Implicit adjoint.** Reverse mode is its transpose: the cotangents ḡ_t of the trajectory give

    λ_T = ḡ_T,    λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1}        (Lᵀ λ = ḡ),

then ∂L/∂v₀ = J_1ᵀ λ_1 and the cotangents of x_t and θ from one VJP of the vmapped step at
(v_{t-1}, x_t) with λ_t. ``Adjoint.apply`` (one mechanism for every solver) is a
``jax.custom_jvp`` whose tangent is ``lax.custom_linear_solve(L, b, tangent_solve,
transpose_solve)``; JAX's transpose of it is exactly the adjoint. The solver's iterations are
never differentiated and no iterate is stored: the residuals are the inputs and the trajectory.

Strategies (``BACKWARD_MODES`` is ``"auto"`` and their names, in this order), each solving both
linear systems the same way:

* ``linear`` — one structure-aware associative scan of the compact factors J_t (forward) or of
  their transposes (reverse);
* ``sequential`` — a ``lax.scan`` of per-step JVPs (forward) or a reverse one of per-step VJPs
  (the cell's own AD rules — custom_vjp, rounding — apply per step, as in lax.scan's gradient);
* ``autodiff`` — no implicit rule: JAX differentiates the exact forward solver itself, at
  lax.scan's memory cost. Never chosen by ``auto``.

Each has ``applies(facts, rec, blockers, solver) -> (ok, reason)``, ``cost(facts, rec, K) ->
Prediction``, ``tangent_solve`` / ``transpose_solve``, and the shared ``apply(forward, step,
structure, exact, tangent_step) -> solve``, which makes the forward solve
``forward(consts, v0, xt) -> (vs, stats)`` differentiable.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from . import costs
from .dtypes import zeros_cotangent
from .registry import Registry
from .solvers import get_solver, pricing, solver_names
from .solvers.linear import linear_scan, linearize_steps
from .solvers.sequential import sequential_trajectory

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
    """An adjoint strategy: how the two *linear* trajectory systems are solved.

    With L the linearised trajectory map, (L w)_t = w_t − J_t w_{t−1} (w_0 = 0):

    * ``tangent_solve`` solves L w = b — the forward-mode tangent recurrence
      w_t = J_t w_{t−1} + b_t;
    * ``transpose_solve`` solves Lᵀ λ = ḡ — the adjoint recurrence λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1}.

    ``apply`` (shared by every strategy) makes the forward solve differentiable in both modes
    with them. ``implicit`` ones supply the derivative themselves (the forward solver then runs
    the primal step, custom_vjp calls inlined); otherwise JAX differentiates the forward solver,
    which then runs the cell's own rules. ``auto`` ones are candidates of ``backward="auto"``."""

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

    def tangent_solve(self, step, structure, consts, prev, xt, b):
        """w_1..w_T with w_t = J_t w_{t−1} + b_t, w_0 = 0 (J_t at ``prev`` = v_0..v_{T−1})."""
        raise NotImplementedError

    def transpose_solve(self, step, structure, consts, prev, xt, g):
        """λ_1..λ_T with λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, λ_{T+1} = 0 (J_t at ``prev``)."""
        raise NotImplementedError

    def apply(self, forward: Callable, step: Callable, structure: Any, exact: bool = True,
              tangent_step: Callable | None = None) -> Callable:
        """``forward(consts, v0, xt) -> (vs, stats)`` made differentiable: a ``jax.custom_jvp``.

        Its tangent is ṽ = L⁻¹ b with b_t = ∂f/∂θ θ̇ + ∂f/∂x ẋ_t (+ J_1 ḣ_0 at t = 1) — one JVP
        of the step vmapped over t at the solution (under ``jax.checkpoint``: its residuals are the
        solution and the inputs only) — by ``lax.custom_linear_solve`` with ``tangent_solve`` as
        its solve and ``transpose_solve`` as its transpose. Reverse mode is JAX's transpose of
        this linear map: λ = L⁻ᵀ ḡ by ``transpose_solve``, then the transposed JVP (one VJP of
        the vmapped step) gives the cotangents of θ, x_t and v_0. The primal re-enters ``solve``,
        so every order of differentiation is implicit; the solver is never differentiated.
        ``tangent_step`` (default ``step``) is the step the forward tangent solve linearises (the
        primal, custom_vjp calls inlined); ``b`` and the adjoint use ``step``, the cell's own rules."""
        tstep = step if tangent_step is None else tangent_step

        @jax.custom_jvp
        def solve(consts, v0, xt):
            return forward(consts, v0, xt)

        @solve.defjvp
        def solve_jvp(primals, tangents):
            consts, v0, xt = primals
            d_consts, d_v0, d_xt = tangents
            out = solve(consts, v0, xt)
            vs = out[0]
            d_stats = jax.tree_util.tree_map(zeros_cotangent, out[1])
            if vs.shape[0] == 0:  # T = 0: nothing depends on the inputs
                return out, (jnp.zeros_like(vs), d_stats)
            prev = jnp.concatenate([v0[None], vs[:-1]], axis=0)
            F = jax.vmap(step, in_axes=(None, 0, 0))
            d_prev = jnp.concatenate([d_v0[None], jnp.zeros_like(prev[1:])], axis=0)
            _, b = jax.jvp(jax.checkpoint(F), (consts, prev, xt), (d_consts, d_prev, d_xt))
            Ft = jax.vmap(tstep, in_axes=(None, 0, 0))

            def matvec(w):  # (L w)_t = w_t − J_t w_{t−1}
                w_prev = jnp.concatenate([jnp.zeros_like(w[:1]), w[:-1]], axis=0)
                return w - jax.jvp(lambda p: Ft(consts, p, xt), (prev,), (w_prev,))[1]

            solve_t = lambda _, rhs: self.tangent_solve(tstep, structure, consts, prev, xt, rhs)  # noqa: E731
            try:
                d_vs = jax.lax.custom_linear_solve(
                    matvec, b, solve_t, lambda _, g: self.transpose_solve(step, structure, consts, prev, xt, g))
            except (ValueError, TypeError, NotImplementedError):
                # traced, not run: re-raises unless only the transpose failed
                jax.eval_shape(lambda b: jax.lax.custom_linear_solve(matvec, b, solve_t), b)
                # JAX cannot reverse-differentiate the cell's step (e.g. a while_loop on the state): forward
                # mode is still L⁻¹ b; reverse mode transposes this solve and raises JAX's own error there,
                # exactly where lax.scan's gradient raises it.
                d_vs = self.tangent_solve(tstep, structure, consts, prev, xt, b)
            return out, (d_vs, d_stats)

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
        """One extraction, one scan and the vmapped VJP of the step (≈ 3 step evaluations, their
        flops and ``pricing.rows`` at ``K.row_op_time``)."""
        T, D, isz, cplx, xb, _ = pricing.sizes(rec)
        st = facts["structure"]
        fl = pricing.flops(facts, cplx)
        t_ex, w_ex = pricing.extraction(T, D, fl, st, isz, xb, K, pricing.tangent(facts, rec, cplx),
                                        pricing.rows(facts, rec, st.n_jvps))
        t_sc, w_sc = pricing.scan(T, D, st, isz, cplx, K)
        t_vjp = (3.0 * T * fl / K.par_flops + T * (2 * xb + 3 * D * isz) / K.bytes_per_s
                 + 2.0 * T * pricing.rows(facts, rec) * K.row_op_time)
        mem = 3.0 * T * (st.floats() + D) * isz + T * xb
        return pricing.Prediction(K.parallel_overhead + t_ex + t_sc + t_vjp, mem, 1.0, w_ex + w_sc + 3 * T * fl,
                                  float(pricing.levels(T)))

    def tangent_solve(self, step, structure, consts, prev, xt, b):
        f = lambda v, x: step(consts, v, x)  # noqa: E731
        _, a = linearize_steps(f, structure, prev, xt)  # J_1..J_T at the solution
        return linear_scan(structure, a, b, jnp.zeros_like(prev[0]))

    def transpose_solve(self, step, structure, consts, prev, xt, g):
        f = lambda v, x: step(consts, v, x)  # noqa: E731
        _, a = linearize_steps(f, structure, prev, xt)
        at = jax.vmap(structure.transpose, axis_size=prev.shape[0])(a)
        # reverse scan with factor M_t = J_{t+1}ᵀ (M_T unused, λ_{T+1} = 0)
        m = jax.tree_util.tree_map(lambda x: jnp.concatenate([x[1:], x[-1:]], axis=0), at)
        return linear_scan(structure, m, g, jnp.zeros_like(prev[0]), reverse=True)


#: How much dearer a non-fusable op (dot, reduction, …) of a step's VJP is in the reverse loop than
#: a forward step's op (``K.op_overhead``): transposed matvecs, outer-product accumulations.
VJP_OP_FACTOR = 1.3
#: The reverse loop's own work per step beyond its slices (priced at ``loop_bandwidth``), in ``op_overhead``s.
REVERSE_LOOP_OPS = 0.1
# Both: a least-squares fit (relative error) over the 16 cells of the benchmark suite (2-core AMD
# EPYC, XLA:CPU, JAX 0.10.2, T = 4096, the reverse loop of ``SequentialAdjoint.transpose_solve``
# timed alone, with its λ-independent part moved out of the loop by ``autopar.hoist``). The
# earlier fit (3.6, 0.4) was made on loops that were not hoisted and ran past XLA:CPU's 8-thunk
# in-order limit; it overpriced the hoisted loops 1.5–2.5× (dense GRU D = 4: 2.55×).


def _sequential_cost(facts, rec, K) -> pricing.Prediction:
    """A reverse lax.scan whose body is one state-VJP of the step (λ ↦ J_tᵀ λ, primal recomputed:
    the facts ``vjp_ops`` / ``vjp_eqns`` / ``vjp_flops``; ``vjp_hoisted_flops``, the part the loop
    moves out, at ``par_flops``), priced as a forward step is, its ops at
    ``VJP_OP_FACTOR``·``op_overhead``, each equation at ``vjp_eqn_time`` and its slices (ḡ_t and
    the ``vjp_residual_floats`` in, λ_t out) at ``costs.loop_bandwidth``; then the cotangents of
    x and θ by one vmapped VJP of the step (≈ 2 evaluations at ``par_flops`` and ``row_op_time``)
    and its traffic."""
    T, D, isz, cplx, xb, const_floats = pricing.sizes(rec)
    fl = pricing.flops(facts, cplx)
    real, cx = facts.get("vjp_ops", (0.0, 0.0))
    ops = (VJP_OP_FACTOR * (real + K.complex_op_factor * cx) + REVERSE_LOOP_OPS) * K.op_overhead
    slices = (2 * D + facts.get("vjp_residual_floats", D)) * isz
    body = (K.step_overhead + ops + facts.get("vjp_eqns", 0) * K.vjp_eqn_time * cplx
            + facts.get("vjp_flops", 0.0) * cplx / K.seq_flops + slices / costs.loop_bandwidth(K))
    moved = facts.get("vjp_hoisted_flops", 0.0) * cplx  # the part of the loop body moved out of it
    rest = ((2.0 * fl + moved + const_floats * cplx) / K.par_flops + (3 * D * isz + 2 * xb) / K.bytes_per_s
            + 2.0 * pricing.rows(facts, rec) * K.row_op_time)
    return pricing.Prediction(T * (body + rest), 2.0 * T * D * isz + T * xb, 1.0, T * (3 * fl + const_floats),
                              float(T))


@register_adjoint
class SequentialAdjoint(Adjoint):
    """λ by a reverse lax.scan of the cell's own per-step VJPs."""

    name = "sequential"
    description = "reverse lax.scan"

    def cost(self, facts, rec, K):
        return _sequential_cost(facts, rec, K)

    def tangent_solve(self, step, structure, consts, prev, xt, b):
        def f(w, inp):  # w = w_{t−1}
            b_t, p_t, x_t = inp
            return jax.jvp(lambda v: step(consts, v, x_t), (p_t,), (w,))[1] + b_t

        return sequential_trajectory(f, jnp.zeros_like(prev[0]), (b, prev, xt))

    def transpose_solve(self, step, structure, consts, prev, xt, g):
        def f(c, inp):  # c = J_{t+1}ᵀ λ_{t+1}; returns J_tᵀ λ_t, λ_t = ḡ_t + c
            g_t, p_t, x_t = inp
            return jax.vjp(lambda v: step(consts, v, x_t), p_t)[1](g_t + c)[0]

        # both loops go through sequential_trajectory, which moves the λ-independent part (the
        # primal at v_{t−1}, its derivatives) out of the loop when worthwhile (autopar.hoist)
        c = sequential_trajectory(f, jnp.zeros_like(prev[0]), (g, prev, xt), reverse=True)
        return g + jnp.concatenate([c[1:], jnp.zeros_like(c[:1])], axis=0)


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

    def apply(self, forward, step, structure, exact=True, tangent_step=None):
        return forward


#: The values ``backward=`` accepts (``backward_modes()`` also counts strategies registered later).
BACKWARD_MODES = backward_modes()
