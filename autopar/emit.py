r"""Stage 4: build the program for a plan. The only stage that builds JAX computations.

The emitted function maps ``(consts, h0 leaves, x leaves)`` to the state
trajectory. Discrete (integer/bool) state leaves are solved first and exactly;
the float state is then solved by the planned solver, made differentiable by the planned
adjoint strategy (``autopar.adjoint``: one ``jax.custom_jvp`` shared by every solver,
``sequential`` included, whose tangent is a linear trajectory solve and whose transpose is the
implicit adjoint — so a CPU's sequential forward still gets the planner's choice of backward —
or ``autodiff``, which lets JAX differentiate an exact forward solver).
A recurrence whose integer state reads the float state runs as one ``lax.scan`` of the joint
state, differentiated by JAX.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .adjoint import get_adjoint, separable
from .errors import FallbackWarning
from .plan import Plan
from .solvers import Problem, get_solver
from .solvers.linear import proven_residual
from .solvers.result import Result

__all__ = ["Info", "PackedInfo", "build", "pack", "unpack", "residual", "nonfinite_residual"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Info:
    """What happened in a solve. Array fields are traced values under jit (one per sequence under vmap).

    ``result`` is how the solve ended, an int32 `autopar.Result` code — ``converged``,
    ``max_iterations``, ``diverged``, ``nonfinite``, ``stalled`` or ``fell_back`` (compare with the members:
    ``info.result == autopar.Result.fell_back``; ``outcome`` gives the member once concrete).
    ``solver`` is the name of the solver that produced the result (after any fallback;
    ``fallback`` says why); ``iterations`` the total over the stages that ran; ``history`` the
    residual of every iterate across them (NaN padded); ``residual`` (with ``return_info=True``)
    the per-element one-step defect max_{t,i} |v_{t,i} − f(v_{t−1}, x_t)_i| / (|v_{t,i}| +
    (|J_t|·|v_{t−1}|)_i); ``converged`` that the producing stage met its tolerance and the
    trajectory is finite, i.e. ``result`` is ``converged`` or ``fell_back``
    (``autopar.solvers.convergence`` has the exact guarantee, ``autopar.solvers.newton`` the
    stopping rules).
    """

    solver_index: Any
    iterations: Any
    converged: Any
    residual: Any
    history: Any = None
    result: Any = None
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
    def outcome(self) -> Result:
        """``result`` as an `autopar.Result` member (needs a concrete scalar ``result``)."""
        return Result(int(self.result))

    def with_residual(self, residual) -> Info:
        """This Info with ``residual`` filled in (``return_info=True``); a non-finite residual (NaN
        or inf in the trajectory or in f of it) is never converged: ``result`` becomes ``nonfinite``."""
        ok = jnp.isfinite(residual)
        return dataclasses.replace(self, residual=residual, converged=self.converged & ok,
                                   result=jnp.where(ok, self.result, jnp.asarray(Result.nonfinite, jnp.int32)))

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

        def named(code, name):
            """A concrete code by name, one name per sequence when batched; traced as is."""
            try:
                c = np.asarray(code)
            except Exception:  # noqa: BLE001 - traced
                return code
            return repr(name(int(c))) if c.ndim == 0 else [name(int(i)) for i in c.ravel()]

        try:
            why = self.fallback
        except Exception:  # noqa: BLE001 - traced or batched solver_index
            why = None
        solver = named(self.solver_index, lambda i: self.chain[i])
        result = named(self.result, lambda i: Result(i).name)
        fell = f", fallback={why!r}" if why else ""
        return (
            f"Info(solver={solver}, result={result}, iterations={show(self.iterations)}, "
            f"converged={show(self.converged)}, residual={show(self.residual)}, backward={self.backward!r}{fell})"
        )


def _shift(v0, vs):
    """(v_0..v_{T-1}) from v0 and (v_1..v_T)."""
    return jnp.concatenate([v0[None], vs[:-1]], axis=0)


def make_differentiable_solve(rec, plan: Plan, warm: bool = False):
    """``solve(consts, v0, xt) -> (vs, stats arrays)``, differentiable by the plan's adjoint strategy.

    ``warm``: ``xt`` carries a third entry, the (T, D) first iterate of the Newton solvers (a warm
    start, passed as ``options['init']``; exact solvers ignore it). It rides in ``xt`` so the
    custom_vjp sees it as an argument (not a closed-over tracer); the step never reads it, so its
    cotangent is zero (and the caller stops its gradient)."""
    solver = get_solver(plan.solver)
    strategy = get_adjoint(plan.backward)
    structure = plan.structure

    def step(consts, v, xt):  # the adjoint's: JAX applies the cell's custom rules
        disc, x = xt[:2]
        return rec.step(consts, v, disc, x)[0]

    def primal(consts, v, xt):  # custom_vjp calls inlined (the same values), so the solvers can linearise
        return rec.primal_step(consts, v, *xt[:2])[0]

    solved = primal if strategy.implicit else step

    def forward(consts, v0, xt):
        options = dict(plan.options, init=xt[2]) if warm else plan.options
        xt = tuple(xt[:2])
        f = lambda v, x: solved(consts, v, x)  # noqa: E731
        problem = Problem(f, v0, xt, structure, rec.length, options, (rec.layout.split, rec.layout.join))
        vs, stats = solver.solve(problem)
        return vs, (jnp.asarray(stats.solver_index, jnp.int32), stats.iterations, stats.converged, stats.history,
                    jnp.asarray(stats.result, jnp.int32))

    return strategy.apply(forward, step, structure, exact=solver.exact, tangent_step=primal)


def build(rec, plan: Plan) -> Callable:
    """The program for ``plan``: ``run(consts, h0_leaves, x_leaves, init_leaves=None) -> (state leaves (T, ...),
    Info)``; ``init_leaves`` (state leaves (T, ...), as returned) warm-start the Newton solvers.

    ``Info.residual`` is NaN here and ``converged`` / ``result`` are the solver's alone: ``residual``
    checks a returned trajectory in a program of its own (``Info.with_residual``: a trajectory with
    NaN / inf in it is never converged), so asking for it never recompiles the solve."""
    layout = rec.layout
    chain = get_solver(plan.solver).chain()
    T = rec.length

    def run(consts, h0_leaves, x_leaves, init_leaves=None):
        v0, disc0 = layout.ravel(h0_leaves)
        init = None
        if init_leaves is not None and T > 0:  # the float part of the trajectory; never differentiated
            init = jax.lax.stop_gradient(jax.vmap(layout.ravel)(list(init_leaves))[0])
        if not separable(rec):
            # The float state cannot be solved on its own: one lax.scan of the joint state,
            # differentiated by JAX (the planner's backward is "autodiff" here).
            def body(carry, x):
                v, disc = carry
                v, disc = rec.step(consts, v, disc, x)
                return (v, disc), (v, disc)

            _, (vs, discs) = jax.lax.scan(body, (v0, list(disc0)), list(x_leaves), length=T)
            stats = (jnp.asarray(0, jnp.int32), jnp.asarray(T, jnp.int32), jnp.asarray(True), None,
                     jnp.asarray(Result.converged, jnp.int32))
        else:
            discs = _discrete_trajectory(rec, plan, consts, v0, disc0, x_leaves)
            disc_prev = [jnp.concatenate([d0[None], d[:-1]], 0) for d0, d in zip(disc0, discs)]
            solve = make_differentiable_solve(rec, plan, warm=init is not None)
            xt = (disc_prev, list(x_leaves)) + (() if init is None else (init,))
            vs, stats = solve(list(consts), v0, xt)
        leaves = jax.vmap(layout.unravel)(vs, list(discs)) if T > 0 else _empty_leaves(layout, discs)
        if plan.forced and len(chain) > 1:
            _warn_on_fallback(stats[0], chain)
        # Whether the trajectory is finite is not judged here: a pass over all T·D values costs a
        # cheap cell's eager call 10-40 % (multi-axis, T = 4096: ~0.28 ms of 1.1), and a call that
        # does not ask for Info would pay it for nothing. ``Info.with_residual`` judges it when Info
        # is asked for (the residual is inf where anything is NaN / inf); a Newton stage already
        # stops on a non-finite iterate (``solvers.newton.iterate``).
        info = Info(stats[0], stats[1], stats[2], jnp.asarray(jnp.nan, jnp.float32), stats[3], stats[4], chain,
                    plan.solver, plan.backward)
        return leaves, info

    return run


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedInfo:
    """A program's `Info` as two outputs (``pack``): int32 ``codes`` ``[solver_index, iterations,
    converged, result]`` on the last axis, and ``history``; the static fields ride in the treedef.
    Each output of a program is a buffer and a thunk of its own: Info's five scalars took an eager
    CPU call past XLA:CPU's 8-thunk limit for in-order execution (dense GRU D = 16, T = 8, under
    jit: 51 µs a call with them, 25 packed, 24 without)."""

    codes: Any
    history: Any = None
    chain: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    planned: str = dataclasses.field(default="", metadata=dict(static=True))
    backward: str = dataclasses.field(default="", metadata=dict(static=True))


def pack(info: Info) -> PackedInfo:
    """``info`` as a `PackedInfo` (its ``residual``, NaN in a program, is dropped)."""
    codes = [info.solver_index, info.iterations, info.converged, info.result]
    return PackedInfo(jnp.stack([jnp.asarray(c).astype(jnp.int32) for c in codes], axis=-1), info.history,
                      info.chain, info.planned, info.backward)


@jax.jit
def _split_codes(codes):
    return codes[..., 0], codes[..., 1], codes[..., 2].astype(bool), codes[..., 3]


def unpack(packed: PackedInfo) -> Info:
    """The `Info` of a `PackedInfo` (one dispatch when eager), ``residual`` NaN."""
    index, iterations, converged, result = _split_codes(packed.codes)
    residual = jnp.full(jnp.shape(packed.codes)[:-1], jnp.nan, jnp.float32)
    return Info(index, iterations, converged, residual, packed.history, result, packed.chain, packed.planned,
                packed.backward)


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


def nonfinite_residual(hs):
    """The residual of a trajectory that is exact by construction (a lax.scan whose step has
    effects, never re-run to check it): 0, or inf when a float leaf holds NaN / inf."""
    floats = [h for h in jax.tree_util.tree_leaves(hs) if jnp.issubdtype(jnp.result_type(h), jnp.inexact)]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(h)) for h in floats])) if floats else True
    return jnp.where(finite, 0.0, jnp.inf).astype(jnp.float32)


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
    return proven_residual(f, plan.structure, prev, (disc_prev, list(x_leaves)), vs)
