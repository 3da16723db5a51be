"""The front door: ``parallelize``, ``scan`` and ``explain``.

``parallelize(cell)`` returns a ``Parallelized`` callable. Each call traces the cell
at the call's signature (trace), runs the analysis passes (analyse, cached per
signature), chooses a solver (plan) and runs the emitted program (emit); the
whole is one ``jax.jit``, so eager calls compile once per input signature and
calls under an outer jit/vmap/grad compose as with any JAX function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import config, emit, plan as plan_mod, trace
from .errors import AutoparError, validate_leaves
from .passes import analyse, facts_valid_for
from .report import Report
from .solvers import SOLVER_NAMES, get_solver

__all__ = ["parallelize", "Parallelized", "scan", "explain"]


_KNOWN_OPTIONS = {"backward", "memory_budget", "init", "damping", "picard_warmup", "check", "chunk_size", "fallback"}


FORWARD_MODE_MESSAGE = (
    "autopar differentiates in reverse mode only: gradients come from an implicit adjoint "
    "(a jax.custom_vjp around the solver), and JAX cannot push forward-mode tangents (jax.jvp, "
    "jax.jacfwd, jax.hessian) through a custom_vjp. Use jax.grad / jax.vjp / jax.jacrev "
    "(second derivatives: jax.jacrev(jax.jacrev(f))), or, for forward mode, build the recurrence "
    "with solver='sequential' (or 'linear' for an affine cell) and backward='autodiff', which lets JAX "
    "differentiate the solver itself at lax.scan's memory cost."
)


def _check_solver(solver: Any) -> None:
    if solver is None:  # the default: autopar.config.solver(), resolved (and validated) per call
        return
    if not isinstance(solver, str):
        raise TypeError(f"`solver` must be a string such as 'auto' or 'linear'; got {type(solver).__name__}: {solver!r}.")
    if solver != "auto":
        get_solver(solver)


class Parallelized:
    """A recurrence step ``cell(h, x) -> h_new`` made parallel over time.

    Call as ``fn(h0, xs)`` → states h_1..h_T stacked on axis 0 (the same values as
    ``lax.scan``); ``fn(h0, xs, return_info=True)`` → ``(hs, info)``;
    ``fn.explain(h0, xs)`` → a ``Report``.
    """

    def __init__(self, cell: Callable, *, solver: str | None = None, tol: float | None = None,
                 max_iters: int | None = None, **options: Any) -> None:
        if not callable(cell):
            raise TypeError(f"`cell` must be callable as cell(h, x) -> new_h; got {type(cell).__name__}: {cell!r}.")
        _check_solver(solver)
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; known options: {sorted(_KNOWN_OPTIONS)}.")
        if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"`tol` must be a positive number; got {tol!r}.")
        if max_iters is not None and not (isinstance(max_iters, int) and max_iters >= 1):
            raise ValueError(f"`max_iters` must be a positive int; got {max_iters!r}.")
        self.cell = cell
        self.solver = solver
        self.options = dict(options, tol=tol, max_iters=max_iters)
        self._analysis: dict = {}
        self._programs: dict = {}
        self._traces: dict = {}
        self._program_ids: dict = {}
        self._jitted = jax.jit(self._run, static_argnames=("key", "length", "reverse", "return_info"))
        functools.update_wrapper(self, cell, updated=())

    # ---- stages ------------------------------------------------------------------
    def _settings(self) -> tuple[str, dict, tuple]:
        """(solver, options, key): explicit arguments win over ``autopar.config``'s defaults; the
        key holds the settings in force, so a changed setting never reuses a cached plan."""
        solver = self.solver if self.solver is not None else config.solver()
        options = self.options if "backward" in self.options else dict(self.options, backward=config.backward())
        return solver, options, (solver, options["backward"], config.planner_backend())

    def _prepare(self, h0, xs, length=None):
        rec = trace.trace_cell(self.cell, h0, xs, length, name=getattr(self.cell, "__name__", "cell"))
        solver, options, settings = self._settings()
        key = (rec.signature(), rec.length, jax.default_backend(), settings)
        if key not in self._analysis or not facts_valid_for(self._analysis[key][0], rec):
            facts = analyse(rec)
            if self.options.get("check"):
                from .passes.check import check_facts

                check_facts(rec, facts)
            try:
                p = plan_mod.make_plan(rec, facts, solver, options=options)
            except ValueError as e:
                from_config = {k: v for k, v, explicit in (("solver", solver, self.solver is not None),
                               ("backward", options["backward"], "backward" in self.options)) if not explicit and v != "auto"}
                if not from_config:
                    raise
                raise ValueError(f"{e} (The default {from_config} came from autopar.config: an override()/set() "
                                 f"or ${config.ENV['solver']} / ${config.ENV['backward']}.)") from e
            self._analysis[key] = (facts, p)
        facts, p = self._analysis[key]
        return rec, facts, p

    def _run(self, consts, h0, xs, key, length=None, reverse=False, return_info=False):
        # ``consts`` (the cell's closed-over arrays, traced afresh by the caller) are explicit
        # arguments: the jitted program never captures them, so a later call with new closed-over
        # values (or tracers of an outer jax.grad/vmap) cannot reuse stale ones.
        if reverse:
            xs = jax.tree_util.tree_map(lambda a: jnp.flip(a, 0), xs)
        rec, facts, p = self._programs[key]
        program = emit.build(rec, p, with_residual=return_info)
        leaves, info = program(consts, jax.tree_util.tree_leaves(h0), jax.tree_util.tree_leaves(xs))
        if reverse:
            leaves = [jnp.flip(l, 0) for l in leaves]
        hs = jax.tree_util.tree_unflatten(rec.layout.treedef, leaves)
        return (hs, info) if return_info else hs

    # ---- public ------------------------------------------------------------------
    def __call__(self, h0: Any, xs: Any = None, *, length: int | None = None, reverse: bool = False,
                 return_info: bool = False):
        validate_leaves(h0, "h0")
        validate_leaves(xs, "xs")
        trace.xs_length(xs, length)
        # The cell is traced outside the jit so its closed-over values enter the program as
        # explicit, differentiable arguments. Like lax.scan, the trace is cached per input
        # signature; it is redone whenever the cached closed-over values were tracers of an outer
        # transformation (jax.grad / vmap / jit), which must never be reused once that trace ends.
        sig = (_call_signature(h0, xs, length), self._settings()[2])
        hit = self._traces.get(sig)
        if hit is None:
            rec, facts, p = self._prepare(h0, xs, length)
            # a small static key for the jit cache: one id per distinct program
            key = self._program_ids.setdefault((rec.signature(), rec.length, self._settings()[2]),
                                               len(self._program_ids))
            self._programs[key] = (_without_consts(rec), facts, p)
            consts = rec.consts
            if not any(isinstance(c, jax.core.Tracer) for c in consts):
                self._traces[sig] = (key, consts)
        else:
            key, consts = hit
        try:
            return self._jitted(consts, h0, xs, key=key, length=length, reverse=bool(reverse),
                                return_info=bool(return_info))
        except TypeError as e:
            if "forward-mode autodiff" in str(e) and "custom_vjp" in str(e):
                raise AutoparError(FORWARD_MODE_MESSAGE) from e
            raise

    def explain(self, h0: Any, xs: Any = None, *, length: int | None = None) -> Report:
        """What autopar proves about this cell at this signature, and what it would run."""
        rec, facts, p = self._prepare(h0, xs, length)
        return Report(rec.name, facts, p, rec.layout, rec.length)

    def __repr__(self) -> str:
        solver = self.solver if self.solver is not None else f"{config.solver()} (autopar.config default)"
        return f"autopar.parallelize({getattr(self.cell, '__name__', self.cell)!r}, solver={solver!r})"


def parallelize(cell: Callable | None = None, *, solver: str | None = None, tol: float | None = None,
                max_iters: int | None = None, **options: Any):
    """Make a recurrence step parallel over time.

    Use as ``@autopar.parallelize`` or ``@autopar.parallelize(solver="linear")``.
    ``cell(h, x) -> new_h`` where ``h`` is any pytree of arrays and ``x`` one time step
    of the inputs. Solvers: ``"auto"`` (the planner chooses), ``"sequential"``
    (``lax.scan``), ``"linear"`` (exact, affine cells), and the Newton family where available.
    Without ``solver=`` (or ``backward=``) the process-wide default of ``autopar.config``
    applies (``"auto"`` unless set by ``autopar.config.override`` or ``$AUTOPAR_SOLVER``).
    """
    if cell is None:
        return functools.partial(parallelize, solver=solver, tol=tol, max_iters=max_iters, **options)
    return Parallelized(cell, solver=solver, tol=tol, max_iters=max_iters, **options)


def _call_signature(h0, xs, length) -> tuple:
    """Hashable key of what a trace depends on: pytree structures, leaf shapes, dtypes, weak types."""
    def leaf_key(x):
        if isinstance(x, (bool, int, float, complex)):
            return type(x).__name__
        return (tuple(np.shape(x)), str(x.dtype), bool(getattr(x, "weak_type", False)))

    hl, ht = jax.tree_util.tree_flatten(h0)
    xl, xt = jax.tree_util.tree_flatten(xs)
    return (ht, tuple(map(leaf_key, hl)), xt, tuple(map(leaf_key, xl)), length, jax.default_backend())


def _without_consts(rec):
    """``rec`` with its const values dropped (they are passed to the program explicitly), so the
    program cache holds no arrays or tracers of a finished call."""
    import dataclasses

    from . import _compat

    def strip(closed):
        placeholders = [jax.ShapeDtypeStruct(jnp.shape(c), jnp.result_type(c)) for c in closed.consts]
        return _compat.ClosedJaxpr(closed.jaxpr, placeholders)

    return dataclasses.replace(rec, step_jaxpr=strip(rec.step_jaxpr), cell_jaxpr=strip(rec.cell_jaxpr))


def _state_cell(f):
    def cell(carry, x):
        out = f(carry, x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"`f` must return a pair (new_carry, y) like the body of jax.lax.scan; got {type(out).__name__}."
            )
        return out[0]

    cell.__name__ = getattr(f, "__name__", "f")
    return cell


def scan(f: Callable, init: Any, xs: Any = None, length: int | None = None, reverse: bool = False,
         unroll: int | bool = 1, *, solver: str | None = None, return_info: bool = False, **options: Any):
    """Drop-in for ``jax.lax.scan``: ``f(carry, x) -> (carry, y)``; returns ``(carry, ys)``.

    The state update is solved by autopar; then every ``y`` comes from one vmapped
    pass over (previous carry, x). ``unroll`` is accepted for signature compatibility
    and used by the sequential solver only.
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(carry, x) -> (carry, y); got {type(f).__name__}: {f!r}.")
    validate_leaves(init, "init")
    validate_leaves(xs, "xs")
    T = trace.xs_length(xs, length)
    fn = parallelize(_state_cell(f), solver=solver, **options)
    out = fn(init, xs, length=length, reverse=reverse, return_info=return_info)
    hs, info = out if return_info else (out, None)
    if T == 0:
        carry = init
        ys = _empty_ys(f, init, xs)
    else:
        xs_ord = xs
        first = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], init)
        if reverse:
            # step t (processing x_t) reads the carry after x_{t+1}
            prev = jax.tree_util.tree_map(lambda h, a: jnp.concatenate([h[1:], a], 0), hs, first)
            carry = jax.tree_util.tree_map(lambda h: h[0], hs)
        else:
            prev = jax.tree_util.tree_map(lambda a, h: jnp.concatenate([a, h[:-1]], 0), first, hs)
            carry = jax.tree_util.tree_map(lambda h: h[-1], hs)
        if xs_ord is None:
            ys = jax.vmap(lambda c: f(c, None)[1])(prev)
        else:
            ys = jax.vmap(lambda c, x: f(c, x)[1])(prev, xs_ord)
    return ((carry, ys), info) if return_info else (carry, ys)


def _empty_ys(f, init, xs):
    x0 = None if xs is None else jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], jnp.asarray(a).dtype), xs)
    init_s = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.asarray(a).dtype), init)
    y_shape = jax.eval_shape(lambda c, x: f(c, x)[1], init_s, x0)
    return jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape), s.dtype), y_shape)


def explain(f: Callable, init: Any, xs: Any = None, length: int | None = None, *, solver: str | None = None, **options: Any) -> Report:
    """Report for a ``lax.scan``-style ``f(carry, x) -> (carry, y)``."""
    return parallelize(_state_cell(f), solver=solver, **options).explain(init, xs, length=length)
