r"""Stage 4: build the program for a plan. The only stage that builds JAX computations.

The emitted function maps ``(consts, h0 leaves, x leaves)`` to the state
trajectory. Discrete (integer/bool) state leaves are solved first and exactly;
the float state is then solved by the planned solver inside one
``jax.custom_jvp`` shared by every solver:

**Implicit tangent.** At the solution v_t = f(v_{t-1}, x_t; θ), the tangents of
the inputs give the tangent trajectory by one *linear* recurrence forward in
time, whatever the forward solver was:

    ṽ_t = J_t ṽ_{t−1} + ∂f/∂x ẋ_t + ∂f/∂θ θ̇,    ṽ_0 = v̇_0,    J_t = ∂f/∂v (v_{t−1}, x_t).

The rule computes the primal by re-entering the solver (never differentiated) and
the tangent with ops linear in the tangents, the trajectory held constant: either
a ``lax.custom_linear_solve`` whose solve is the structure-aware ``linear_scan``
on the compact J_t and whose transpose solve is the reverse scan on J_tᵀ
(``backward="linear"``), or a ``lax.scan`` of per-step JVPs
(``backward="sequential"``); the plan picks. Reverse mode is JAX's transpose of
that tangent solve, which *is* the implicit adjoint

    λ_T = ḡ_T,    λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1},

(a reverse linear scan on J_tᵀ, or a reverse scan of per-step VJPs), followed by
the VJP of the step at the solution for the x and θ cotangents. The per-step
JVPs are rematerialised (``jax.checkpoint``) and J_t is extracted inside the
solves, so the residuals are the inputs and the trajectory (T·D numbers): no
iterate, no step intermediate. Symbolic-zero tangents (inputs not being
differentiated) enter no JVP.

Every solver, ``sequential`` included, runs inside this rule (so a CPU's
sequential forward still gets the planner's choice of backward). Two exceptions:
a cell that calls a ``jax.custom_vjp`` (JAX cannot push tangents through it) keeps
a ``jax.custom_vjp`` rule with the sequential adjoint, reverse mode only; and
``backward="autodiff"`` (exact solvers only, and recurrences whose integer state
reads the float state) skips the rule and lets JAX differentiate the forward
solver, at lax.scan's memory cost.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat
from .errors import FallbackWarning
from .plan import Plan
from .solvers import Problem, get_solver
from .solvers import convergence as cv
from .solvers.linear import linear_scan, linearize_steps
from .solvers.sequential import sequential_trajectory

__all__ = ["Info", "build", "residual"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Info:
    """What happened in a solve. Array fields are traced values under jit.

    ``solver`` is the name of the solver that produced the result (after any
    fallback; ``fallback`` says why); ``iterations`` the total over the stages that ran;
    ``residual`` (with ``return_info=True``) the per-element one-step defect
    max_{t,i} |v_{t,i} − f(v_{t−1}, x_t)_i| / (|v_{t,i}| + (|J_t|·|v_{t−1}|)_i); ``converged``
    that the producing stage met its tolerance and the trajectory is finite
    (``autopar.solvers.convergence`` has the exact guarantee).
    """

    solver_index: Any
    iterations: Any
    converged: Any
    residual: Any
    history: Any = None
    chain: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    planned: str = dataclasses.field(default="", metadata=dict(static=True))
    backward: str = dataclasses.field(default="", metadata=dict(static=True))

    @property
    def solver(self) -> str:
        """Name of the solver used (needs a concrete ``solver_index``)."""
        try:
            return self.chain[int(self.solver_index)]
        except jax.errors.ConcretizationTypeError:
            return f"<traced: one of {self.chain}>"

    @property
    def fallback(self) -> str | None:
        """Why the planned solver was not the one used, or None."""
        name = self.solver
        return None if name == self.planned else f"{self.planned} did not converge; fell back to {name}"

    def __repr__(self) -> str:
        def show(x):
            try:
                return np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x)
            except Exception:  # noqa: BLE001 - traced
                return x

        try:
            why = self.fallback
        except Exception:  # noqa: BLE001 - traced solver_index
            why = None
        fell = f", fallback={why!r}" if why else ""
        return (
            f"Info(solver={self.solver!r}, iterations={show(self.iterations)}, converged={show(self.converged)}, "
            f"residual={show(self.residual)}, backward={self.backward!r}{fell})"
        )


def _zeros_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _shift(v0, vs):
    """(v_0..v_{T-1}) from v0 and (v_1..v_T)."""
    return jnp.concatenate([v0[None], vs[:-1]], axis=0)


def make_differentiable_solve(rec, plan: Plan):
    """``solve(consts, v0, xt) -> (vs, stats arrays)`` differentiable in both modes, implicitly.

    A ``jax.custom_jvp`` whose rule solves the linear tangent recurrence at the solution (see the
    module docstring); JAX derives reverse mode by transposing it. A cell that calls a
    ``jax.custom_vjp`` cannot be pushed forward by JAX, so it keeps a ``jax.custom_vjp`` rule
    (reverse mode only, sequential adjoint).
    """
    if rec.has_custom_vjp:
        return _custom_vjp_solve(rec, plan)
    solver = get_solver(plan.solver)
    structure = plan.structure

    def step(consts, v, xt):
        disc, x = xt
        return rec.step(consts, v, disc, x)[0]

    @jax.custom_jvp
    def solve(consts, v0, xt):
        f = lambda v, x: step(consts, v, x)  # noqa: E731
        problem = Problem(f, v0, xt, structure, rec.length, plan.options, (rec.layout.split, rec.layout.join))
        vs, stats = solver.solve(problem)
        return vs, (stats.solver_index, stats.iterations, stats.converged, stats.history)

    def solve_jvp(primals, tangents):
        consts, v0, xt = primals
        d_consts, d_v0, d_xt = tangents
        # The primal re-enters ``solve``: an outer differentiation (jax.hessian, jvp of jvp) meets
        # this rule again instead of the solver's iterations, so every order is implicit.
        out = solve(consts, v0, xt)
        vs = out[0]
        d_stats = jax.tree_util.tree_map(_zeros_cotangent, out[1])
        # Only perturbed inexact inputs enter the tangent solve (symbolic zeros: a weight that is not
        # differentiated costs no JVP work and is no residual).
        c_mask, dc = _active(consts, d_consts)
        x_mask, dx = _active(xt, d_xt)
        v0_active = _is_active(v0, d_v0)
        if vs.shape[0] == 0 or not (dc or dx or v0_active):  # T = 0, or nothing perturbed
            return out, (jnp.zeros_like(vs), d_stats)
        prev = _shift(v0, vs)
        if not v0_active:
            d_v0 = jnp.zeros_like(v0)
        if plan.backward == "linear":
            d_vs = _tangent_linear(step, structure, consts, xt, prev, (c_mask, dc), d_v0 if v0_active else None,
                                   (x_mask, dx))
        else:
            d_vs = _tangent_sequential(step, consts, xt, prev, (c_mask, dc), d_v0, (x_mask, dx))
        return out, (d_vs, d_stats)

    solve.defjvp(solve_jvp, symbolic_zeros=True)
    return solve


def _is_inexact(x) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def _is_active(primal, tangent) -> bool:
    """Whether ``tangent`` perturbs ``primal``: inexact, and not a symbolic zero."""
    return _is_inexact(primal) and not isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _active(primals, tangents) -> tuple[list[bool], list]:
    """Per leaf of ``primals``, whether it is perturbed; and the perturbed leaves' tangents."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    mask = [_is_active(l, t) for l, t in zip(leaves, treedef.flatten_up_to(tangents))]
    return mask, [t for t, m in zip(treedef.flatten_up_to(tangents), mask) if m]


def _masked_jvp(fun, primals, mask, tangents):
    """``jax.jvp(fun, primals, ·)[1]`` perturbing only the leaves of ``primals`` where ``mask`` is
    set (``tangents``: theirs, in flattening order); the other leaves are held constant."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)

    def g(*active):
        it = iter(active)
        full = [next(it) if m else l for l, m in zip(leaves, mask)]
        return fun(*jax.tree_util.tree_unflatten(treedef, full))

    return jax.jvp(g, tuple(l for l, m in zip(leaves, mask) if m), tuple(tangents))[1]


def _tangent_sequential(step, consts, xt, prev, dc, d_v0, dx):
    """ṽ_t = ∂f/∂v ṽ_{t−1} + ∂f/∂x ẋ_t + ∂f/∂θ θ̇ by a ``lax.scan`` of per-step JVPs at the solution.

    Each step's JVP is rematerialised (``jax.checkpoint``), so reverse mode (JAX's transpose: a
    reverse scan of per-step VJPs, the θ cotangent accumulated in the carry) saves only the scan's
    inputs, the trajectory and the x_t, not the step's intermediates.
    """
    (c_mask, dc), (x_mask, dx) = dc, dx
    mask = [*c_mask, True, *x_mask]

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def tangent_step(c, p, x, dc_, dv, dx_):
        return _masked_jvp(step, (c, p, x), mask, (*dc_, dv, *dx_))

    def body(dv, inp):
        p, x, dx_ = inp
        dv = tangent_step(consts, p, x, dc, dv, dx_)
        return dv, dv

    return jax.lax.scan(body, d_v0, (prev, xt, dx))[1]


def _tangent_linear(step, structure, consts, xt, prev, dc, d_v0, dx):
    """The tangent recurrence by one structure-aware linear scan, as a ``lax.custom_linear_solve``.

    (I − S∘J) ṽ = b with b_t = ∂f/∂x ẋ_t + ∂f/∂θ θ̇ (+ J_1 ṽ_0 at t = 1) and S the shift in time.
    ``solve`` is the forward ``linear_scan`` on the compact J_t, ``transpose_solve`` the reverse one
    on J_tᵀ (the implicit adjoint), so JAX's transpose runs the structured reverse scan. J_t is
    extracted inside each solve from the trajectory, and b's JVP is rematerialised, so reverse mode
    saves the trajectory and the inputs only. ``d_v0`` is None when v_0 is not perturbed.
    """
    (c_mask, dc), (x_mask, dx) = dc, dx
    F = jax.vmap(step, in_axes=(None, 0, 0))
    t = list(dc)
    if d_v0 is not None:
        # ṽ_0 perturbs v_0 only: pad with a literal so that no zeros array becomes a residual
        t.append(jax.lax.pad(d_v0[None], jnp.zeros((), d_v0.dtype), [(0, prev.shape[0] - 1, 0), (0, 0, 0)]))
    mask = [*c_mask, d_v0 is not None, *x_mask]
    b = jax.checkpoint(lambda c, p, x, t: _masked_jvp(F, (c, p, x), mask, t))(consts, prev, xt, [*t, *dx])
    f = lambda v, x: step(consts, v, x)  # noqa: E731
    zero = lambda: jnp.zeros(prev.shape[1:], prev.dtype)  # noqa: E731 - built inside each solve, not a residual

    @jax.checkpoint
    def matvec(u):  # (I − S∘J) u, J_t applied by a JVP at (v_{t−1}, x_t)
        ju = jax.vmap(lambda p, x, w: jax.jvp(lambda v: f(v, x), (p,), (w,))[1])(prev, xt, _shift(zero(), u))
        return u - ju

    def solve_fwd(_, rhs):
        _, a = linearize_steps(f, structure, prev, xt)
        return linear_scan(structure, a, rhs, zero())

    def solve_rev(_, g):
        # λ_t = g_t + J_{t+1}ᵀ λ_{t+1}: reverse scan with factor M_t = J_{t+1}ᵀ (M_T unused)
        _, a = linearize_steps(f, structure, prev, xt)
        at = jax.vmap(structure.transpose, axis_size=prev.shape[0])(a)
        m = jax.tree_util.tree_map(lambda x: jnp.concatenate([x[1:], x[-1:]], axis=0), at)
        return linear_scan(structure, m, g, zero(), reverse=True)

    return jax.lax.custom_linear_solve(matvec, b, solve_fwd, solve_rev)


def _custom_vjp_solve(rec, plan: Plan):
    """The reverse-mode-only rule for cells that call a ``jax.custom_vjp`` (e.g. gradient
    clipping): the implicit adjoint by a reverse scan of the cell's own VJPs."""
    solver = get_solver(plan.solver)
    structure = plan.structure

    def step(consts, v, xt):  # the adjoint's: JAX applies the cell's custom rules
        disc, x = xt
        return rec.step(consts, v, disc, x)[0]

    def forward(consts, v0, xt):
        # the solvers linearise the primal (custom_vjp calls inlined; the same values)
        f = lambda v, x: rec.primal_step(consts, v, *x)[0]  # noqa: E731
        problem = Problem(f, v0, xt, structure, rec.length, plan.options, (rec.layout.split, rec.layout.join))
        vs, stats = solver.solve(problem)
        return vs, (stats.solver_index, stats.iterations, stats.converged, stats.history)

    @jax.custom_vjp
    def solve(consts, v0, xt):
        return forward(consts, v0, xt)

    def solve_fwd(consts, v0, xt):
        out = solve(consts, v0, xt)
        return out, (consts, v0, xt, out[0])

    def solve_bwd(res, cts):
        consts, v0, xt, vs = res
        g = cts[0]
        if vs.shape[0] == 0:  # T = 0: nothing depends on the inputs
            return (jax.tree_util.tree_map(_zeros_cotangent, consts), jnp.zeros_like(v0),
                    jax.tree_util.tree_map(_zeros_cotangent, xt))
        # the linear adjoint needs JVPs of the cell, which JAX cannot take through a custom_vjp
        return _adjoint_sequential(step, consts, v0, xt, _shift(v0, vs), g)

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


def forward_mode_error(rec) -> str:
    """The message for forward-mode AD of a cell that calls a ``jax.custom_vjp``."""
    names = ", ".join(repr(n) for n in _compat.custom_vjp_names(rec.step_jaxpr)) or "a jax.custom_vjp"
    return (
        f"forward-mode differentiation (jax.jvp / jax.jacfwd / jax.linearize / jax.hessian) cannot go "
        f"through this cell: it calls the jax.custom_vjp function {names}, which JAX can only differentiate "
        "in reverse mode. Use jax.grad / jax.vjp / jax.jacrev (second order: jax.jacrev(jax.jacrev(f))), "
        "or replace the custom_vjp by a jax.custom_jvp."
    )


def _float_vjp(fun, *primals):
    """VJP of ``fun`` w.r.t. the inexact leaves of ``primals`` only.

    Returns ``(out, vjp)`` where ``vjp(ct)`` gives the cotangents of the inexact leaves as a
    flat list (integer leaves have none); ``_expand`` rebuilds full cotangent pytrees.
    """
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    mask = [bool(jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact)) for l in leaves]

    def g(float_leaves):
        it = iter(float_leaves)
        full = [next(it) if m else l for l, m in zip(leaves, mask)]
        return fun(*jax.tree_util.tree_unflatten(treedef, full))

    return jax.vjp(g, [l for l, m in zip(leaves, mask) if m])


def _expand(float_cts, primals):
    """Full cotangent pytrees for ``primals`` from the inexact leaves' cotangents (float0 elsewhere)."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    it = iter(float_cts)
    full = [next(it) if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact) else _zeros_cotangent(l) for l in leaves]
    return jax.tree_util.tree_unflatten(treedef, full)


def _adjoint_sequential(step, consts, v0, xt, prev, g):
    n_const = sum(1 for c in jax.tree_util.tree_leaves(consts) if jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact))

    def body(carry, inp):
        c, d_consts = carry  # c = J_{t+1}ᵀ λ_{t+1}
        g_t, p_t, x_t = inp
        _, vjp = _float_vjp(step, consts, p_t, x_t)
        (cts,) = vjp(g_t + c)
        dc, rest = cts[:n_const], cts[n_const:]
        n_v = 1 if jnp.issubdtype(p_t.dtype, jnp.inexact) else 0
        dv, dx = (rest[0] if n_v else jnp.zeros_like(c)), rest[n_v:]
        return (dv, [a + b for a, b in zip(d_consts, dc)]), dx

    zc = [jnp.zeros_like(c) for c in jax.tree_util.tree_leaves(consts) if jnp.issubdtype(jnp.asarray(c).dtype, jnp.inexact)]
    (d_v0, dc), dx = jax.lax.scan(body, (jnp.zeros_like(v0), zc), (g, prev, xt), reverse=True)
    d_consts = _expand(dc, consts)
    d_xt = _expand(dx, xt)
    return d_consts, d_v0, d_xt


def build(rec, plan: Plan) -> Callable:
    """The program for ``plan``: ``run(consts, h0_leaves, x_leaves) -> (state leaves (T, ...), Info)``.

    ``Info.residual`` is NaN here: ``residual`` checks a returned trajectory in a program of its own,
    so asking for it never recompiles the solve."""
    layout = rec.layout
    n_disc = rec.n_discrete
    chain = get_solver(plan.solver).chain()
    T = rec.length

    def run(consts, h0_leaves, x_leaves):
        v0, disc0 = layout.ravel(h0_leaves)
        if plan.backward == "autodiff":
            # No implicit adjoint: JAX differentiates the (exact) forward solver itself.
            def body(carry, x):
                v, disc = carry
                v, disc = rec.step(consts, v, disc, x)
                return (v, disc), (v, disc)

            if plan.solver == "sequential":
                _, (vs, discs) = jax.lax.scan(body, (v0, list(disc0)), list(x_leaves), length=T,
                                              unroll=plan.options.get("unroll", 1))
            else:
                discs = _discrete_trajectory(rec, plan, consts, v0, disc0, x_leaves)
                disc_prev = [jnp.concatenate([d0[None], d[:-1]], 0) for d0, d in zip(disc0, discs)]
                f = lambda v, xt: rec.step(consts, v, *xt)[0]  # noqa: E731
                problem = Problem(f, v0, (disc_prev, list(x_leaves)), plan.structure, T, plan.options,
                                  (rec.layout.split, rec.layout.join))
                vs, _ = get_solver(plan.solver).solve(problem)
            stats = (jnp.asarray(0, jnp.int32), jnp.asarray(1 if plan.solver == "linear" else T, jnp.int32),
                     jnp.asarray(True), None)
        else:
            discs = _discrete_trajectory(rec, plan, consts, v0, disc0, x_leaves)
            disc_prev = [jnp.concatenate([d0[None], d[:-1]], 0) for d0, d in zip(disc0, discs)]
            solve = make_differentiable_solve(rec, plan)
            vs, stats = solve(list(consts), v0, (disc_prev, list(x_leaves)))
        leaves = jax.vmap(layout.unravel)(vs, list(discs)) if T > 0 else _empty_leaves(layout, discs)
        if plan.forced and len(chain) > 1:
            _warn_on_fallback(stats[0], chain)
        info = Info(stats[0], stats[1], stats[2], jnp.asarray(jnp.nan, jnp.float32), stats[3], chain, plan.solver,
                    plan.backward)
        return leaves, info

    return run


def _warn_on_fallback(solver_index, chain):
    """A forced solver that fell back warns (``autopar.FallbackWarning``) when the program runs,
    under jit too; under vmap, if any sequence fell back."""

    def warn(idx):
        idx = np.atleast_1d(np.asarray(idx))
        if (idx != 0).any():
            used = sorted({chain[int(i)] for i in idx if i != 0})
            warnings.warn(
                f"solver={chain[0]!r} was forced but did not converge; the result comes from its fallback "
                f"{' / '.join(used)} (still exact). Check `info.converged` / `info.residual`, raise `max_iters`, "
                "or let solver='auto' choose.", FallbackWarning, stacklevel=2)

    jax.debug.callback(warn, solver_index)


def _empty_leaves(layout, discs):
    out, it = [], iter(discs)
    for l in layout.leaves:
        out.append(jnp.zeros((0, *l.shape), l.dtype) if l.differentiable else next(it))
    return out


def _discrete_trajectory(rec, plan, consts, v0, disc0, x_leaves):
    """Integer/bool leaves, solved exactly on their own (they do not read the float state).

    With ``plan.discrete == "affine-scan"`` each integer leaf updates elementwise as
    n_t = a_t ⊙ n_{t−1} + b_t with b_t = g(0, x_t) and a_t = g(1, x_t) − g(0, x_t); integer
    multiply-add is a ring, so the associative scan is exact (wraparound included).
    """
    if not disc0:
        return []
    v_dummy = jnp.zeros_like(v0)
    g = lambda disc, x: rec.step(consts, v_dummy, disc, x)[1]  # noqa: E731
    if plan.discrete == "affine-scan" and rec.length > 0:
        zeros = [jnp.zeros_like(d) for d in disc0]
        ones = [jnp.ones_like(d) for d in disc0]

        def coeffs(x):
            b = g(zeros, x)
            return [g1 - b0 for g1, b0 in zip(g(ones, x), b)], b

        a, b = jax.vmap(coeffs, axis_size=rec.length)(list(x_leaves))
        out = []
        for a_k, b_k, n0 in zip(a, b, disc0):
            b_k = b_k.at[0].add(a_k[0] * n0)
            combine = lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1])  # noqa: E731
            out.append(jax.lax.associative_scan(combine, (a_k, b_k))[1])
        return out

    def body(disc, x):
        new = g(disc, x)
        return new, new

    return jax.lax.scan(body, list(disc0), list(x_leaves), length=rec.length)[1]


def residual(rec, plan: Plan, consts, h0_leaves, hs_leaves, x_leaves):
    """The per-element residual (``autopar.solvers.convergence``) of a returned trajectory, with the
    proven structure's J: max_{t,i} |v_{t,i} − f(v_{t−1}, x_t)_i| / s_{t,i} as a float32 scalar, inf
    if anything is NaN/inf. All leaves in the order the recurrence runs (flipped for ``reverse``)."""
    if rec.length == 0 or rec.size == 0:
        return jnp.zeros((), jnp.float32)
    v0, disc0 = rec.layout.ravel(list(h0_leaves))
    vs, discs = jax.vmap(rec.layout.ravel)(list(hs_leaves))
    vs = jax.lax.stop_gradient(vs)
    prev = _shift(v0, vs)
    disc_prev = [jnp.concatenate([d0[None], d[:-1]], 0) for d0, d in zip(disc0, discs)]
    f = lambda v, xt: rec.primal_step(consts, v, *xt)[0]  # noqa: E731
    fv, a = linearize_steps(f, plan.structure, prev, (disc_prev, list(x_leaves)))
    return cv.stage_residual(plan.structure, a, prev, vs, fv)
