"""The front door: ``parallelize``, ``scan`` and ``explain``.

``parallelize(cell)`` returns a ``Parallelized`` callable. Each call traces the cell
at the call's signature (trace), runs the analysis passes (analyse, cached per
signature), chooses a solver (plan) and runs the emitted program (emit); the
whole is one ``jax.jit``, so eager calls compile once per input signature and
calls under an outer jit/vmap/grad compose as with any JAX function.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import logging
import time
import types
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat, config, emit, plan as plan_mod, shard, trace
from .errors import AutoparError, validate_leaves
from .passes import analyse, facts_valid_for
from .report import Report
from .solvers import get_solver, solver_options
from .solvers.result import Result

__all__ = ["parallelize", "Parallelized", "scan", "explain"]

#: Logs what is analysed and built, with timings: ``logging.getLogger("autopar").setLevel("INFO")``.
logger = logging.getLogger("autopar")


#: Options every recurrence accepts (planner, analysis); each solver adds those it reads (``Solver.options``).
_COMMON_OPTIONS = frozenset({"backward", "memory_budget", "check", "chunk_size", "axis_name", "mesh"})


def _known_options() -> frozenset:
    """The options ``parallelize`` accepts: the common ones and every registered solver's."""
    return _COMMON_OPTIONS | solver_options()


FORWARD_MODE_MESSAGE = (
    "forward-mode autodiff (jax.jvp, jax.jacfwd, jax.hessian, jax.linearize) cannot pass through this "
    "cell: it calls a jax.custom_vjp, and JAX has no forward mode through a custom_vjp (lax.scan of the "
    "same cell fails the same way). Reverse mode works and applies the custom backward rule: use "
    "jax.grad / jax.vjp / jax.jacrev (second derivatives: jax.jacrev(jax.jacrev(f))), or give the cell a "
    "jax.custom_jvp instead."
)


SHARDED_FORWARD_MODE_MESSAGE = (
    "forward-mode autodiff (jax.jvp, jax.jacfwd, jax.hessian, jax.linearize) is not supported through a "
    "time-sharded solve (mesh= / axis_name=, or xs sharded along time) yet: its derivative is the sharded "
    "implicit adjoint, a jax.custom_vjp, which JAX cannot push tangents through. Reverse mode works "
    "(jax.grad / jax.vjp / jax.jacrev). For forward mode, run the unsharded solve: drop mesh= / axis_name= "
    "and pass xs on one device (e.g. jax.device_put(xs, jax.devices()[0]))."
)


def _forward_mode_error(e: TypeError, sharded: bool) -> AutoparError | None:
    """autopar's reading of JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function"."""
    if "forward-mode autodiff" in str(e) and "custom_vjp" in str(e):
        return AutoparError(SHARDED_FORWARD_MODE_MESSAGE if sharded else FORWARD_MODE_MESSAGE)
    return None


def _check_solver(solver: Any) -> None:
    if solver is None:  # the default: autopar.config.solver(), resolved (and validated) per call
        return
    if not isinstance(solver, str):
        raise TypeError(f"`solver` must be a string such as 'auto' or 'linear'; got {type(solver).__name__}: {solver!r}.")
    if solver != "auto":
        get_solver(solver)


class Parallelized:
    """A recurrence step ``cell(h, x) -> h_new`` made parallel over time.

    Made by `parallelize`; see there for the options. Call as
    ``fn(h0, xs)`` (see `__call__`); ``fn.explain(h0, xs)`` returns a
    `Report`.

    Analysis and compilation are cached per input signature (pytree structure,
    shapes, dtypes of ``h0`` and ``xs``, and ``length``/``reverse``): the first call
    at a signature traces, analyses and compiles (logged on the ``"autopar"``
    logger), later calls only run. ``return_info`` does not change the compiled
    program. Inside an outer ``jax.jit`` the trace and analysis are reused, and XLA
    compiles the outer program (with this one inlined) once per outer signature —
    JAX cannot reuse an executable inside another program.

    As a class attribute it is a descriptor, like a function: ``instance.step``
    is the cell with ``self`` bound (``step(self, h, x)``), sharing this object's
    analysis and compilation caches, so every instance whose cell traces to the
    same program reuses one compilation.
    """

    def __init__(self, cell: Callable, *, solver: str | None = None, tol: float | None = None,
                 max_iters: int | None = None, name: str | None = None, **options: Any) -> None:
        if not callable(cell):
            raise TypeError(f"`cell` must be callable as cell(h, x) -> new_h; got {type(cell).__name__}: {cell!r}.")
        _check_solver(solver)
        known = _known_options()
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; known options: {sorted(known | {'solver', 'tol', 'max_iters', 'name'})}.")
        if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"`tol` must be a positive number; got {tol!r}.")
        if max_iters is not None and not (isinstance(max_iters, int) and max_iters >= 1):
            raise ValueError(f"`max_iters` must be a positive int; got {max_iters!r}.")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string (used in reports and logs); got {type(name).__name__}.")
        self.cell = cell
        self.solver = solver
        self.name = name or _cell_name(cell)
        self.options = dict(options, tol=tol, max_iters=max_iters)
        self._analysis: dict = {}
        self._programs: dict = {}
        self._traces: dict = {}
        self._program_ids: dict = {}
        self._compiled: set = set()
        self._mesh_programs: dict = {}  # entry point 1 (time-sharded inputs): jitted shard_map programs
        self._siblings: dict = {}
        self._bound_to = None  # (parent, instance) for a bound method view
        self._jitted = jax.jit(self._run, static_argnames=("key", "length", "reverse", "chain"))
        self._residual_jitted = jax.jit(self._residual, static_argnames=("key", "reverse"))
        functools.update_wrapper(self, cell, updated=())

    # ---- descriptor: methods and module methods as cells --------------------------
    def __get__(self, instance: Any, owner: type | None = None) -> "Parallelized":
        if instance is None:
            return self
        return self._bind(instance)

    def _bind(self, instance: Any) -> "Parallelized":
        """A view with ``self`` bound. It shares the parent's analysis, program and jit caches
        (the instance's arrays are traced as closed-over constants, so instances of the same
        shapes share one compilation) but keeps no trace cache of its own: attributes of a
        mutable instance are read afresh at every call, as a plain method would."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.cell = functools.partial(self.cell, instance)
        bound._traces = _NoCache()
        bound._bound_to = (self, instance)
        return bound

    def __eq__(self, other: object) -> bool:
        if self._bound_to is None or not isinstance(other, Parallelized) or other._bound_to is None:
            return self is other
        return self._bound_to[0] is other._bound_to[0] and self._bound_to[1] is other._bound_to[1]

    def __hash__(self) -> int:
        if self._bound_to is None:
            return id(self)
        return hash((id(self._bound_to[0]), id(self._bound_to[1])))

    # ---- stages ------------------------------------------------------------------
    def _settings(self) -> tuple[str, dict, tuple]:
        """(solver, options, key): explicit arguments win over ``autopar.config``'s defaults; the
        key holds the settings in force, so a changed setting never reuses a cached plan."""
        solver = self.solver if self.solver is not None else config.solver()
        options = self.options if "backward" in self.options else dict(self.options, backward=config.backward())
        shards = _axis_size(options)
        if shards is not None:  # inside shard_map: the plan knows the mesh axis and its size
            options = dict(options, axis_size=shards)
        return solver, options, (solver, options["backward"], config.planner_backend(), shards)

    def _prepare(self, h0, xs, length=None):
        _check_cell_arity(self.cell, self.name, xs)
        t0 = time.perf_counter()
        rec = trace.trace_cell(self.cell, h0, xs, length, name=self.name)
        t_trace = time.perf_counter() - t0
        solver, options, settings = self._settings()
        key = (rec.signature(), rec.length, jax.default_backend(), settings)
        if key not in self._analysis or not facts_valid_for(self._analysis[key][0], rec):
            t1 = time.perf_counter()
            facts = analyse(rec)
            if self.options.get("check"):
                from .passes.check import check_facts

                check_facts(rec, facts)
            try:
                effects = side_effects(rec.step_jaxpr)
                if effects:  # run once per step, in order: lax.scan, differentiated by JAX
                    p = self._effects_plan(rec, facts, solver, options, effects)
                else:
                    p = plan_mod.make_plan(rec, facts, solver, options=options)
            except ValueError as e:
                from_config = {k: v for k, v, explicit in (("solver", solver, self.solver is not None),
                               ("backward", options["backward"], "backward" in self.options)) if not explicit and v != "auto"}
                if not from_config:
                    raise
                raise ValueError(f"{e} (The default {from_config} came from autopar.config: an override()/set() "
                                 f"or ${config.ENV['solver']} / ${config.ENV['backward']}.)") from e
            self._analysis[key] = (facts, p)
            logger.info("analysed %r: T=%d, D=%d, structure %s -> solver %s, backward %s "
                        "(trace %.2f s, analysis and plan %.2f s)", self.name, rec.length, rec.size,
                        facts["structure"].describe(), p.solver, p.backward, t_trace, time.perf_counter() - t1)
        facts, p = self._analysis[key]
        return rec, facts, p

    def _effects_plan(self, rec, facts, solver, options, effects):
        """The plan of a cell with side effects: the sequential solver (lax.scan: the cell runs once
        per step, in order) and ``backward="autodiff"`` (JAX differentiates that one pass, as
        lax.scan's gradient: an implicit adjoint would evaluate the cell again). A parallel solver or
        an implicit backward passed explicitly is refused; one from ``autopar.config`` gives way."""
        what = ", ".join(effects)
        if self.solver is not None and solver not in ("auto", "sequential"):
            raise ValueError(
                f"solver={solver!r} cannot run {self.name!r}: the cell has side effects ({what}), and a parallel "
                "solver evaluates the cell many times per step (Newton iterations, the Jacobian, the adjoint), so "
                "they would run more than once and out of order. Use solver='auto' or 'sequential' (the cell then "
                "runs once per step, in order, as in lax.scan), or move the effect out of the cell.")
        backward = options.get("backward", "auto")
        if "backward" in self.options and backward not in ("auto", "autodiff"):
            raise ValueError(
                f"backward={backward!r} cannot be used for {self.name!r}: the cell has side effects ({what}), and "
                "the implicit adjoint evaluates the cell again after the forward pass. Use backward='auto' (or "
                "'autodiff'): JAX then differentiates the single lax.scan pass, as lax.scan's gradient does.")
        p = plan_mod.make_plan(rec, facts, "sequential", options=dict(options, backward="autodiff"))
        return dataclasses.replace(
            p, forced=solver == "sequential",
            reason=f"the cell has side effects ({what}): run once per step, in order, as lax.scan",
            backward_reason="side effects: JAX differentiates the one lax.scan pass, as lax.scan's gradient")

    def _lookup(self, h0, xs, length):
        """(call signature, program key, consts) for these arguments, tracing the cell only when
        this signature was not traced before (by a call or by ``explain``).

        The cell is traced outside the jit so its closed-over values enter the program as
        explicit, differentiable arguments. Like lax.scan, the trace is cached per input
        signature; it is redone whenever the cached closed-over values were tracers of an outer
        transformation (jax.grad / vmap / jit), which must never be reused once that trace ends."""
        try:  # a signature seen before passed validation: same leaves, shapes and length
            sig = (_call_signature(h0, xs, length), self._settings()[2])
            hit = self._traces.get(sig)
        except (AttributeError, TypeError):  # a leaf that is not an array: validation says what
            hit = None
        if hit is not None:
            return (sig, *hit)
        validate_leaves(h0, "h0")
        validate_leaves(xs, "xs")
        trace.xs_length(xs, length)
        sig = (_call_signature(h0, xs, length), self._settings()[2])
        rec, facts, p = self._prepare(h0, xs, length)
        # a small static key for the jit cache: one id per distinct program. The folded constants'
        # digest is part of it: a re-trace that closed over other index arrays was re-analysed and
        # must not run the program compiled for the old structure (e.g. a stale permutation).
        key = self._program_ids.setdefault(
            (rec.signature(), rec.length, self._settings()[2], tuple(facts.get("const_fingerprint", ()))),
            len(self._program_ids))
        self._programs[key] = (_without_consts(rec), facts, p)
        consts = rec.consts
        if not any(isinstance(c, _compat.Tracer) for c in consts):
            self._traces[sig] = (key, consts)
        return sig, key, consts

    def _run(self, consts, h0, xs, init=None, *, key, length=None, reverse=False, chain=None):
        # ``consts`` (the cell's closed-over arrays, traced afresh by the caller) are explicit
        # arguments: the jitted program never captures them, so a later call with new closed-over
        # values (or tracers of an outer jax.grad/vmap) cannot reuse stale ones.
        # One program per signature: ``return_info`` only decides what the caller returns (the
        # program's Info is packed into two outputs, ``emit.pack``: a call that discards it pays
        # next to nothing for it), and the residual (a check of the returned trajectory) is a
        # separate, small program.
        if reverse:
            xs = jax.tree_util.tree_map(lambda a: jnp.flip(a, 0), xs)
        rec, facts, p = self._programs[key]
        if chain == "first":  # the lazy chain (``_lazy_chain``): only the planned solver's stage
            p = dataclasses.replace(p, options=dict(p.options, fallback=False))
        elif chain == "rest":  # ... and the rest of it, from that stage's best iterate (``init``)
            p = dataclasses.replace(p, options=dict(p.options, chain_start=1))
        h_leaves, x_leaves = jax.tree_util.tree_leaves(h0), jax.tree_util.tree_leaves(xs)
        axis = self.options.get("axis_name")
        if axis is not None:  # inside the user's shard_map (``init`` is refused up front there)
            program = shard.build(rec, p, shard.Axis(axis, p.shards.size, reverse))
            leaves, info = program(consts, h_leaves, x_leaves)
        else:
            init_leaves = None
            if init is not None:
                init_leaves = jax.tree_util.tree_leaves(init)
                if reverse:
                    init_leaves = [jnp.flip(a, 0) for a in init_leaves]
            leaves, info = emit.build(rec, p)(consts, h_leaves, x_leaves, init_leaves)
        if reverse:
            leaves = [jnp.flip(l, 0) for l in leaves]
        hs = jax.tree_util.tree_unflatten(rec.layout.treedef, leaves)
        return hs, emit.pack(info)

    def _residual(self, consts, h0, xs, hs, key, reverse=False):
        """``emit.residual`` of a returned trajectory (a program of its own; see ``emit.residual``)."""
        rec, _, p = self._programs[key]
        flip = (lambda a: jnp.flip(a, 0)) if reverse else (lambda a: a)
        x_leaves = [flip(a) for a in jax.tree_util.tree_leaves(xs)]
        h_leaves = [flip(a) for a in jax.tree_util.tree_leaves(hs)]
        axis = self.options.get("axis_name")
        if axis is not None:
            return shard.residual(rec, p, consts, jax.tree_util.tree_leaves(h0), h_leaves, x_leaves,
                                  shard.Axis(axis, p.shards.size, reverse))
        return emit.residual(rec, p, consts, jax.tree_util.tree_leaves(h0), h_leaves, x_leaves)

    # ---- public ------------------------------------------------------------------
    def __call__(self, h0: Any, xs: Any = None, *, length: int | None = None, reverse: bool = False,
                 return_info: bool = False, init: Any = None):
        """Run the recurrence: the states h_1..h_T, the same values as ``lax.scan``.

        Args:
            h0: the initial state, any pytree of arrays (float, complex, integer or bool leaves).
            xs: the inputs, a pytree whose leaves all have the time axis first (length T);
                the cell sees one time step ``x = xs[t]``. ``None`` for an input-free
                recurrence (then pass ``length``); the cell is called with ``x=None``.
            length: T, needed when ``xs`` is None; otherwise it must equal the leading axis.
            reverse: run from t = T down to 1, like ``lax.scan(..., reverse=True)``; the
                result is still indexed by t.
            return_info: also return an `Info`.
            init: a warm start: a trajectory like the returned ``hs`` (same pytree, shapes and
                dtypes; e.g. the previous training step's ``hs``) used as the first iterate of the
                Newton solvers (deer, quasi-deer, elk, quasi-elk) instead of ``options['init']``.
                It changes how many iterations they need, not the result (the same tolerance
                applies); exact solvers (sequential, linear) ignore it. It is never differentiated
                (``stop_gradient``): gradients are those of the solution. Passing it or not are
                two programs (each compiled once).

        Returns:
            ``hs``, a pytree like ``h0`` whose every leaf has a leading time axis of length T
            (``hs[t]`` is the state after step t+1; ``h0`` is not included). With
            ``return_info=True``, the pair ``(hs, info)``: ``info.solver`` (after any fallback),
            ``info.iterations``, ``info.converged``, ``info.residual`` (the one-step defect
            h_t − cell(h_{t−1}, x_t), each element against its own scale: see `Info`) and
            ``info.fallback``.
        """
        mesh, axis = self.options.get("mesh"), self.options.get("axis_name")
        if init is not None and (mesh is not None or axis is not None):
            raise ValueError("`init` (a warm start) is not supported with time-sharded solves (mesh= / axis_name=) "
                             "yet; drop init= there.")
        if mesh is not None or axis is None:
            found = (mesh, axis) if mesh is not None else shard.time_axis_of(xs)
            if found is not None:  # entry point 1: xs sharded along time (or mesh= given)
                if init is not None:
                    raise ValueError("`init` (a warm start) is not supported with time-sharded inputs yet; "
                                     "drop init= or pass unsharded xs.")
                try:
                    return shard.on_mesh(self, found[0], found[1], h0, xs, length=length, reverse=reverse,
                                         return_info=return_info)
                except TypeError as e:
                    err = _forward_mode_error(e, sharded=True)
                    if err is None:
                        raise
                    raise err from e
        if init is not None:
            _check_init_structure(init, h0, trace.xs_length(xs, length))
        sig, key, consts = self._lookup(h0, xs, length)
        if init is not None:
            _check_init_dtypes(init, self._programs[key][0].layout)
        kw = dict(key=key, length=length, reverse=bool(reverse))
        try:
            if self._lazy_chain(key, consts, h0, xs, init):
                hs, info = self._lazy_call(sig, consts, h0, xs, init, kw)
            else:
                self._log_compile(sig, consts, h0, xs, init, kw)
                hs, packed = self._jitted(consts, h0, xs, init, **kw)
                info = emit.unpack(packed) if return_info else None
            if return_info:
                if side_effects(self._programs[key][0].step_jaxpr):  # exact (lax.scan); never re-run effects
                    res = emit.nonfinite_residual(hs)
                else:
                    res = self._residual_jitted(consts, h0, xs, hs, key=key, reverse=bool(reverse))
                info = info.with_residual(res)
        except TypeError as e:
            err = _forward_mode_error(e, sharded=axis is not None and not self._programs[key][0].has_custom_vjp)
            if err is None:
                raise
            raise err from e
        return (hs, info) if return_info else hs

    def _lazy_chain(self, key, consts, h0, xs, init) -> bool:
        """Whether this call runs the planned solver's stage alone, compiling the rest of its
        fallback chain only when that stage fails (``_lazy_call``).

        Only eager calls (no tracer in the arguments: under jit / vmap / grad the chain is one
        program, as the outer transformation needs) of a solver with a chain and ``fallback`` on.
        The price: the call waits for the solve to read ``info.result``."""
        p = self._programs[key][2]
        if p.options.get("fallback", True) is False or len(get_solver(p.solver).chain()) < 2:
            return False
        return not any(isinstance(a, _compat.Tracer) for a in jax.tree_util.tree_leaves((consts, h0, xs, init)))

    def _lazy_call(self, sig, consts, h0, xs, init, kw):
        """The first stage; if it failed, the rest of the chain (a second program, compiled the
        first time it is needed) from its best iterate when finite. ``Info`` adds up both parts
        (iterations, history) and indexes the whole chain, as the one-program chain's does."""
        first = dict(kw, chain="first")
        self._log_compile(sig, consts, h0, xs, init, first)
        hs, info = self._jitted(consts, h0, xs, init, **first)
        info = emit.unpack(info)
        if int(info.result) == Result.converged:
            return hs, info
        start = hs if all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(hs)) else init
        rest = dict(kw, chain="rest")
        self._log_compile(sig, consts, h0, xs, start, rest)
        hs, more = self._jitted(consts, h0, xs, start, **rest)
        more = emit.unpack(more)
        h1 = info.history[: int(jnp.sum(~jnp.isnan(info.history)))]
        return hs, dataclasses.replace(more, iterations=info.iterations + more.iterations,
                                       history=jnp.concatenate([h1, more.history]))

    def _log_compile(self, sig, consts, h0, xs, init, kw) -> None:
        """On the first eager call at a signature, compile ahead of time to time (and log) it;
        the jit's own cache then holds the executable. Under an outer transformation the program
        is compiled as part of the outer one, by JAX."""
        ckey = (sig, kw["key"], kw["reverse"], init is not None, kw.get("chain"))
        if ckey in self._compiled:
            return
        args = (consts, h0, xs, init)
        if any(isinstance(a, _compat.Tracer) for a in jax.tree_util.tree_leaves(args)):
            logger.debug("building %r inside an outer JAX transformation (compiled with it)", self.name)
            return
        self._compiled.add(ckey)
        if not logger.isEnabledFor(logging.INFO):
            return
        rec, _, p = self._programs[kw["key"]]
        logger.info("building %r: solver %s, backward %s, T=%d, D=%d", self.name, p.solver, p.backward,
                    rec.length, rec.size)
        t0 = time.perf_counter()
        lowered = self._jitted.lower(*args, **kw)
        t1 = time.perf_counter()
        lowered.compile()
        logger.info("compiled %r in %.2f s (tracing %.2f s, XLA %.2f s)", self.name, time.perf_counter() - t0,
                    t1 - t0, time.perf_counter() - t1)

    def _sharded_sibling(self, axis_name: str) -> "Parallelized":
        """This cell with ``axis_name`` set and no ``mesh``: what runs inside our shard_map."""
        sib = self._siblings.get(axis_name)
        if sib is None:
            opts = {k: v for k, v in self.options.items() if k not in ("mesh", "tol", "max_iters")}
            sib = self._siblings[axis_name] = Parallelized(
                self.cell, solver=self.solver, tol=self.options.get("tol"), max_iters=self.options.get("max_iters"),
                name=self.name, **dict(opts, axis_name=axis_name))
        return sib

    def explain(self, h0: Any, xs: Any = None, *, length: int | None = None,
                measure: bool | int = False) -> Report:
        """What autopar proves about this cell at this signature, and what it would run.

        Nothing is compiled or run: the report renders the same facts and plan a call with
        these arguments uses (a signature a call already traced is not traced again, nor is one
        explained here when it is called). ``print(report)`` for text; in a notebook it renders itself.

        ``measure=True`` (or a number of repeats) also runs every candidate on these arguments
        (compiled first, then timed interleaved, minimum of 3 rounds; ``autopar.measure``) and the
        table shows measured next to predicted time: a check of the cost model on this machine.
        """
        mesh, axis = self.options.get("mesh"), self.options.get("axis_name")
        if mesh is not None or axis is None:
            found = (mesh, axis) if mesh is not None else shard.time_axis_of(xs)
            if found is not None:  # the plan each shard of a time-sharded call runs
                if measure is not False:
                    raise ValueError("explain(..., measure=True) times single-device calls; it does not "
                                     "measure time-sharded ones (call explain without measure).")
                return shard.explain_on_mesh(self, found[0], found[1], h0, xs, length=length)
        _, key, _ = self._lookup(h0, xs, length)
        rec, facts, p = self._programs[key]
        measured = None
        if measure is not False:
            from .measure import DEFAULT_REPEATS, measure_candidates

            opts = {k: v for k, v in self.options.items() if k not in ("tol", "max_iters")}

            def forced(name):
                return Parallelized(self.cell, solver=name, tol=self.options.get("tol"),
                                    max_iters=self.options.get("max_iters"), name=self.name, **opts)

            measured = measure_candidates(forced, p, h0, xs, length, DEFAULT_REPEATS if measure is True else measure)
        return Report(rec.name, facts, p, rec.layout, rec.length, measured)

    def __repr__(self) -> str:
        bound = "" if self._bound_to is None else f" bound to {type(self._bound_to[1]).__name__}"
        solver = self.solver if self.solver is not None else f"{config.solver()} (autopar.config default)"
        return f"<autopar.parallelize {self.name!r}, solver={solver!r}{bound}>"


def _axis_size(options: dict) -> int | None:
    """P, the size of the mesh axis ``axis_name`` names, when called inside ``shard_map`` over it."""
    name = options.get("axis_name")
    if name is None or options.get("mesh") is not None:
        return None
    try:
        return int(jax.lax.axis_size(name))
    except NameError as e:
        raise ValueError(
            f"axis_name={name!r}: no mesh axis of that name is bound here. Call the function inside "
            f"jax.shard_map(..., mesh=mesh) over a mesh with an axis {name!r} (each shard passes its chunk "
            f"of xs), or pass mesh=mesh as well to let autopar shard the inputs itself.") from e


def _check_init_structure(init, h0, T) -> None:
    """``init=`` must be a trajectory like the returned hs: h0's pytree, every leaf (T, *leaf shape)."""
    il, it = jax.tree_util.tree_flatten(init)
    hl, ht = jax.tree_util.tree_flatten(h0)
    if it != ht:
        raise ValueError(f"`init` must be a trajectory like the returned hs (the pytree structure of h0, {ht}); "
                         f"got {it}. Pass the hs of an earlier call with the same h0 structure.")
    for k, (a, h) in enumerate(zip(il, hl)):
        want = (T, *np.shape(h))
        if tuple(np.shape(a)) != want:
            raise ValueError(f"`init` leaf {k} must have shape (T, *h0 leaf shape) = {want}; got {tuple(np.shape(a))}. "
                             "Pass the hs of an earlier call at the same T (time axis first).")


def _check_init_dtypes(init, layout) -> None:
    for k, (a, l) in enumerate(zip(jax.tree_util.tree_leaves(init), layout.leaves)):
        got = jnp.result_type(a)
        if got != jnp.dtype(l.dtype):
            raise ValueError(f"`init` leaf {k} ({l.path}) must have the state's dtype {jnp.dtype(l.dtype).name}; got "
                             f"{got.name}. Cast it (e.g. init.astype(...)) or pass the hs of an earlier call.")


class _NoCache(dict):
    """A trace cache that never keeps anything (bound methods re-read their instance)."""

    def __setitem__(self, k, v) -> None:
        pass


def _cell_name(cell: Callable) -> str:
    """A readable name for reports and logs: the qualified name without ``<locals>``."""
    f = cell
    while isinstance(f, functools.partial):
        f = f.func
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__
    return name.replace(".<locals>", "")


def _check_cell_arity(cell: Callable, name: str, xs: Any) -> None:
    """autopar calls ``cell(h, x)``: say so before tracing when the cell cannot take that."""
    try:
        sig = inspect.signature(cell)
    except (TypeError, ValueError):  # builtins, some C callables
        return
    try:
        sig.bind(None, None)
    except TypeError as e:
        x_is = "None (xs=None)" if xs is None else "one time step of xs, i.e. xs[t] (every leaf without its time axis)"
        raise TypeError(
            f"autopar calls the cell as `{name}(h, x)`: h is the state (a pytree like h0) and x is {x_is}; "
            f"but `{name}{sig}` cannot be called with two positional arguments ({e}). "
            "Write the step as `def cell(h, x): ... return new_h` (a method: `def step(self, h, x)`); "
            "close over parameters, or bind them with functools.partial."
        ) from None


def parallelize(cell: Callable | None = None, *, solver: str | None = None, tol: float | None = None,
                max_iters: int | None = None, name: str | None = None, **options: Any):
    """Make a recurrence step ``cell(h, x) -> h_new`` parallel over the sequence length.

    Use as ``@autopar.parallelize``, ``@autopar.parallelize(solver="deer")`` or
    ``fn = autopar.parallelize(cell, ...)``; it works on methods too (``def step(self, h, x)``).
    autopar calls ``cell(h, x)`` with ``h`` a pytree like ``h0`` and ``x`` one time step of
    ``xs`` (``None`` when ``xs`` is None); it must return the new state with ``h``'s structure,
    shapes and dtypes. ``fn(h0, xs)`` returns the states h_1..h_T stacked on axis 0, the same
    values as ``jax.lax.scan``; ``fn.explain(h0, xs)`` says what was proven and chosen.

    Args:
        cell: the step function. Closed-over arrays are differentiable constants.
        solver: ``"auto"`` (default: the planner picks the cheapest solver that is exact for
            the proven structure on this backend), ``"sequential"`` (``lax.scan``),
            ``"linear"`` (one associative scan; affine cells only), ``"deer"`` (Newton, each
            iteration a linear scan in the proven structure of J), ``"quasi-deer"`` (Newton with
            diag(J)), ``"elk"`` / ``"quasi-elk"`` (Levenberg–Marquardt steps by a parallel Kalman
            smoother, for unstable cells). ``autopar.SOLVER_NAMES`` lists them all. Without
            ``solver=`` (or ``backward=``) the process-wide default of `autopar.config` applies
            (``"auto"`` unless set by ``autopar.config.override`` or ``$AUTOPAR_SOLVER``).
        tol: convergence tolerance of the iterative solvers on the per-element residual
            max_t ‖h_t − cell(h_{t−1}, x_t)‖∞ / (1 + max‖h‖∞), judged per element. Default
            ``None``: by dtype (32·eps for float32, 1e-12 for float64, 1e-2 for 16-bit floats).
        max_iters: iteration cap of the iterative solvers. Default ``None``: min(T + 1, cap)
            with cap 64 for deer and elk, 256 for quasi-deer (Newton is exact after T).
        name: the name used in reports and log lines. Default: the cell's qualified name.

    Other Parameters:
        axis_name (str): run time-sharded over this mesh axis (docs/sharding.md). Alone: the cell
            is called inside the user's ``jax.shard_map(..., check_vma=False)`` on each shard's
            chunk of ``xs`` and returns that chunk's true states (h0: the whole sequence's initial
            state, the same on every shard). With ``mesh``: autopar shards ``xs`` over that axis itself.
            Default None; inputs already sharded along time (a ``NamedSharding``) are detected.
        mesh (jax.sharding.Mesh): with ``axis_name``, shard the time axis over this mesh (any ``xs``,
            traced under jit too); T not divisible by the axis size is padded after the last step
            with copies of the last input, and the padding sliced off. Default None.
        backward (str): how gradients are computed. ``"auto"`` (default: the planner's
            choice), ``"linear"`` (the adjoint recurrence as one reverse structured scan),
            ``"sequential"`` (a reverse ``lax.scan`` of per-step VJPs) or ``"autodiff"`` (JAX
            differentiates the forward solver itself; exact solvers only). Every mode but
            autodiff is the implicit adjoint, exact at the solution whatever the forward
            solver; forward mode (jax.jvp / jacfwd / hessian) solves the tangent recurrence the
            same way (docs/gradients.md).
        causal (bool | int): deer / quasi-deer only: the causal window — once the unconverged
            steps fit in the last T/2, T/4, … steps (down to max(T/16, 32), or the int given), an
            iteration updates only that suffix (docs/solvers.md, "The causal window"). Same
            result and tolerance; more compile time. Default False.
        check (bool): ``True`` verifies the proven sparsity against ``jax.jacfwd`` of the step at
            a few random points during analysis (slow; for debugging passes and rules).
            Default False.
        chunk_size (int): reserved; accepted, but the chunked solvers currently pick their own
            chunk length.
        damping (float): the initial Levenberg–Marquardt damping λ of the ELK solvers (adapted by
            a trust region afterwards). Default 0.01.
        fallback (bool): ``True`` (default) runs the solver's fallback chain (deer → elk →
            sequential) when it does not converge; ``False`` returns the planned solver's best
            iterate, with ``info.converged`` False (and compiles a smaller program).
        init (str | array): the first iterate of the Newton solvers: ``"zeros"`` (default),
            ``"h0"`` (every step at h0), ``"picard"`` (one Picard sweep) or a (T, D) array (the
            flat state trajectory). Per call, ``fn(h0, xs, init=hs_prev)`` (a warm start) wins.
        memory_budget (float): bytes a solver may keep alive; a candidate predicted to exceed it
            is never chosen. Default ``None``: half the device memory (of physical RAM on a CPU).
        picard_warmup (int): ``k`` Picard sweeps before Newton (each makes one more step exact);
            implies ``init="picard"``. Default 0.
        unroll (int): as ``lax.scan``'s ``unroll``, for the sequential solver and the sequential
            fallbacks (``autopar.scan`` passes its own ``unroll`` here). Default 1.

    Returns:
        A `Parallelized` (or, without ``cell``, a decorator that makes one). Analysis
        and compilation happen at the first call for each input signature; set
        ``logging.getLogger("autopar").setLevel("INFO")`` to see what is built and how long it
        took.

    A cell with side effects (``jax.debug.print`` / ``jax.debug.callback``, ``io_callback``) runs
    as ``lax.scan``, once per step and in order, differentiated by JAX (``backward="autodiff"``);
    ``explain()`` says so. A parallel ``solver=`` or an implicit ``backward=`` passed for it raises
    ``ValueError`` at the first call: they would evaluate the cell many times.

    Raises:
        TypeError / ValueError: for an unknown option or solver, or invalid values — here, before
            anything is traced. A cell that cannot be called as ``cell(h, x)`` or returns a state of
            another structure, shape or dtype raises at the first call, before any compilation.
    """
    if cell is None:
        return functools.partial(parallelize, solver=solver, tol=tol, max_iters=max_iters, name=name, **options)
    return Parallelized(cell, solver=solver, tol=tol, max_iters=max_iters, name=name, **options)


def _call_signature(h0, xs, length) -> tuple:
    """Hashable key of what a trace depends on: pytree structures, leaf shapes, dtypes, weak types."""
    def leaf_key(x):
        if isinstance(x, (bool, int, float, complex)):
            return type(x).__name__
        return (tuple(x.shape), x.dtype, bool(getattr(x, "weak_type", False)))

    hl, ht = jax.tree_util.tree_flatten(h0)
    xl, xt = jax.tree_util.tree_flatten(xs)
    return (ht, tuple(map(leaf_key, hl)), xt, tuple(map(leaf_key, xl)), length, jax.default_backend())


def _without_consts(rec):
    """``rec`` with its const values dropped (they are passed to the program explicitly), so the
    program cache holds no arrays or tracers of a finished call."""
    def strip(closed):
        placeholders = [jax.ShapeDtypeStruct(jnp.shape(c), jnp.result_type(c)) for c in closed.consts]
        return _compat.ClosedJaxpr(closed.jaxpr, placeholders)

    return dataclasses.replace(rec, step_jaxpr=strip(rec.step_jaxpr), cell_jaxpr=strip(rec.cell_jaxpr))


def side_effects(jaxpr) -> list[str]:
    """The side effects of a traced cell or body, as names of the primitives that have them
    (``debug_callback`` for ``jax.debug.print`` / ``jax.debug.callback``, ``io_callback``, …),
    nested calls and loops included; empty when it has none. Named-axis effects (collectives
    inside ``shard_map``) are not side effects."""
    jp = getattr(jaxpr, "jaxpr", jaxpr)
    if not any(_is_side_effect(e) for e in jp.effects):
        return []
    names: list[str] = []

    def walk(j):
        for eqn in j.eqns:
            if not any(_is_side_effect(e) for e in eqn.effects):
                continue
            subs = list(_compat.jaxprs_in_params(eqn.params))
            if subs:
                for sub in subs:
                    walk(getattr(sub, "jaxpr", sub))
            elif eqn.primitive.name not in names:
                names.append(eqn.primitive.name)

    walk(jp)
    return names or sorted({type(e).__name__ for e in jp.effects if _is_side_effect(e)})


def _is_side_effect(effect) -> bool:
    return type(effect).__name__ != "NamedAxisEffect"


def scan(f: Callable, init: Any, xs: Any = None, length: int | None = None, reverse: bool = False,
         unroll: int | bool = 1, *, solver: str | None = None, return_info: bool = False, **options: Any):
    """Drop-in for ``jax.lax.scan``: ``f(carry, x) -> (carry, y)``; returns ``(carry, ys)``.

    ``f`` is traced once per input signature and the carry recurrence is planned as
    `parallelize` would (same options). Then:

    * **sequential plan** (the planner's usual choice on a CPU): the whole body runs as one
      ``lax.scan`` pass, carry and ``y`` together, each step once. Its derivatives (``jax.grad``,
      ``jax.jvp``, …) are the planned implicit adjoint (``backward``); with
      ``backward="autodiff"`` it *is* ``lax.scan``, differentiated by JAX.
    * **parallel plan**: the carry trajectory is solved in parallel, then every ``y`` comes
      from one vmapped pass of ``f`` over (previous carry, x).
    * **side effects** (``jax.debug.print`` / ``jax.debug.callback``, ``io_callback``): the body
      runs as ``lax.scan``, once per step and in order, and JAX differentiates that pass, exactly
      as lax.scan (``explain()`` says so). A parallel ``solver=`` or an implicit ``backward=``
      is refused for such a body (``ValueError``): it would run the effects many times.

    Like ``lax.scan`` the work is cached: a call with the same body and input signature
    (shapes, dtypes, pytree structure, ``length``, ``reverse``, options) runs one compiled
    program. The body is recognised by its code and what it captures — closure cells,
    defaults and the globals it reads, arrays by identity (never by value), functions
    recursively — so a lambda re-created per call over the same objects reuses it; a body that
    captures anything else (a dict, a list, a mutable object) is recognised by the function
    object itself, as ``lax.scan`` does. The cache is bounded and holds captured arrays weakly.
    A weakly typed ``init`` (a Python scalar) is promoted to the body's carry dtype, as
    ``lax.scan`` does.

    Args:
        f: the body, ``f(carry, x) -> (new_carry, y)`` as for ``lax.scan``.
        init: the initial carry, any pytree of arrays.
        xs: the inputs, time axis first (``None`` with ``length``).
        length: T when ``xs`` is None.
        reverse: scan from the end, like ``lax.scan(..., reverse=True)``.
        unroll: validated as for ``lax.scan`` (a non-negative int or a bool) and used by the
            sequential passes only.
        solver: as for `parallelize`.
        return_info: also return the solve's `Info` (a sequential plan then solves the carry and
            the ``y`` in two passes, to check the residual; an effectful body reports residual 0).
        **options: any option of `parallelize` (``backward``, ``tol``, ``max_iters``, …).

    Returns:
        ``(carry, ys)``: the final carry (a pytree like ``init``) and the stacked ``y``
        (every leaf with a leading axis of length T). With ``return_info=True``,
        ``((carry, ys), info)`` — the pair first, then the info.
    """
    if not callable(f):
        raise TypeError(f"autopar.scan (as lax.scan): the body `f` must be callable as f(carry, x) -> (carry, y); "
                        f"got {type(f).__name__}: {f!r}.")
    try:
        return _scan(f, init, xs, length, reverse, unroll, solver, return_info, options)
    except (TypeError, ValueError, AutoparError, jax.errors.ConcretizationTypeError) as e:
        # Inputs lax.scan itself rejects get lax.scan's own error (type and wording), so code
        # written against lax.scan's errors keeps working; autopar's own refusals stay as they are.
        theirs = _lax_scan_error(f, init, xs, length, reverse, unroll)
        if theirs is None:
            raise
        raise theirs from e  # lax.scan's exception as is; autopar's reading of it is the __cause__


def _lax_scan_error(f, init, xs, length, reverse, unroll):
    """The exception ``lax.scan`` raises tracing these arguments (abstractly), or None."""
    try:
        jax.eval_shape(lambda i, x: jax.lax.scan(f, i, x, length=length, reverse=reverse, unroll=unroll), init, xs)
    except Exception as e:  # noqa: BLE001 - whatever lax.scan raises is the answer
        return e
    return None


def _scan(f, init, xs, length, reverse, unroll, solver, return_info, options):
    validate_leaves(init, "init")
    validate_leaves(xs, "xs")
    T = trace.xs_length(xs, length)
    unroll = _compat.concrete_or_error(
        None, unroll, "The `unroll` argument to `scan` expects a concrete `int` or `bool` value.")
    if isinstance(unroll, bool):
        unroll = max(T, 1) if unroll else 1
    if not isinstance(unroll, (int, np.integer)) or unroll < 0:
        raise ValueError("`unroll` must be a `bool` or a non-negative `int`.")
    if unroll != 1:
        options = dict(options, unroll=int(unroll))
    entry, refs = _scan_entry(f, solver, options)
    tr = entry.trace(f, refs, init, xs, length)
    return tr.call(entry, init, xs, length=length, reverse=bool(reverse), unroll=int(unroll),
                   return_info=bool(return_info))


# ---- autopar.scan's cache ----------------------------------------------------------------------
class _Unkeyable(Exception):
    """A captured value the body cache cannot recognise by identity or value."""


_SCALARS = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis))


def _value_key(v, refs: list, seen: set):
    """A hashable stand-in for a value the body captures (arrays by type, their identities
    appended to ``refs``; scalars by value; functions by `_function_key`), or raise `_Unkeyable`."""
    if isinstance(v, _SCALARS):
        return (type(v), v)
    if isinstance(v, _compat.Tracer):  # never cached (the trace is redone): its type is enough
        return ("tracer", str(v.aval))
    if isinstance(v, jax.Array):  # its identity goes to ``refs`` (the key of the trace), its type here
        refs.append(v)
        return ("array", v.shape, str(v.dtype), bool(getattr(v, "weak_type", False)))
    if isinstance(v, (types.ModuleType, type, types.BuiltinFunctionType, np.dtype)):
        return ("id", id(v), v)
    if isinstance(v, tuple):
        return ("tuple", tuple(_value_key(e, refs, seen) for e in v))
    if isinstance(v, functools.partial):
        return ("partial", _value_key(v.func, refs, seen), _value_key(v.args, refs, seen),
                tuple(sorted((k, _value_key(a, refs, seen)) for k, a in v.keywords.items())))
    if isinstance(v, types.FunctionType):
        return _function_key(v, refs, seen)
    if isinstance(v, (Parallelized, jax.custom_jvp, jax.custom_vjp)) or type(v).__name__ == "PjitFunction":
        return ("id", id(v), v)  # fixed behaviour, recognised by identity (kept alive by the key)
    raise _Unkeyable(type(v).__name__)


def _function_key(f: types.FunctionType, refs: list, seen: set):
    """What a Python function computes from: its code, its closure cells' contents, its defaults
    and the module globals its code reads (each by `_value_key`)."""
    if id(f) in seen:  # recursion
        return ("recursive", f.__code__)
    seen.add(id(f))
    code = f.__code__
    cells = tuple(_value_key(c.cell_contents, refs, seen) if _cell_full(c) else ("empty",) for c in f.__closure__ or ())
    g = f.__globals__
    read = tuple((n, _value_key(g[n], refs, seen)) for n in _global_names(code) if n in g)
    defaults = _value_key(f.__defaults__, refs, seen)
    kw = tuple(sorted((k, _value_key(a, refs, seen)) for k, a in (f.__kwdefaults__ or {}).items()))
    return ("function", code, id(g), cells, read, defaults, kw)


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _global_names(code) -> tuple:
    """The names ``code`` (and the code nested in it: comprehensions, inner functions) looks up."""
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names.extend(_global_names(c))
    return tuple(dict.fromkeys(names))


def _body_key(f) -> tuple[Any, list]:
    """(key, arrays keyed by identity): by what ``f`` captures, or by ``f`` itself (as lax.scan's
    cache) when it captures something `_value_key` cannot recognise."""
    refs: list = []
    try:
        if isinstance(f, (types.FunctionType, functools.partial)):
            return ("captured", _value_key(f, refs, set())), refs
    except (_Unkeyable, RecursionError):
        pass
    return ("object", f), []


class _ScanEntry:
    """autopar.scan's state for one body *structure* (its code and the types of what it captures,
    `_body_key`) and options: the `Parallelized` of its carry recurrence (analysis and solver
    programs), the jitted whole-call programs (one per traced jaxpr, so a body re-created over new
    arrays of the same shapes — a training loop's new parameters — reuses the compiled program),
    and the traces, keyed by the identities of the captured arrays and the input signature."""

    def __init__(self, fn: Parallelized) -> None:
        self.fn = fn
        self.traces: "collections.OrderedDict[Any, _ScanTrace]" = collections.OrderedDict()
        self.programs: "collections.OrderedDict[Any, _ScanTrace]" = collections.OrderedDict()

    def trace(self, f, refs, init, xs, length) -> "_ScanTrace":
        sig = (tuple(map(id, refs)), _call_signature(init, xs, length), self.fn._settings()[2])
        tr = self.traces.get(sig)
        if tr is not None:
            if tr.alive():
                self.traces.move_to_end(sig)
                return tr
            del self.traces[sig]
        tr = _ScanTrace.build(self, f, {id(a) for a in refs}, init, xs, length)
        if tr.cacheable:
            self.traces[sig] = tr
            for a in refs:  # a captured array that dies ends the trace (its id may be reused)
                weakref.finalize(a, self.traces.pop, sig, None)
            while len(self.traces) > _TRACES_PER_BODY:
                self.traces.popitem(last=False)
        return tr

    def program(self, tr: "_ScanTrace") -> "_ScanTrace":
        """The trace whose jitted program runs ``tr`` (the first one with the same jaxpr and layout)."""
        if not tr.cacheable:
            return tr
        got = self.programs.get(tr.spec)
        if got is None:
            got = self.programs[tr.spec] = tr
            while len(self.programs) > _TRACES_PER_BODY:
                self.programs.popitem(last=False)
        return got


#: autopar.scan's bodies (``_body_key`` and the options), least recently used first.
_SCAN_CACHE: "collections.OrderedDict[Any, _ScanEntry]" = collections.OrderedDict()
_SCAN_CACHE_SIZE = 64
_TRACES_PER_BODY = 16


def _scan_entry(f, solver, options) -> tuple[_ScanEntry, list]:
    """(entry, captured arrays) for body ``f`` with these options."""
    fkey, refs = _body_key(f)
    try:
        k = (fkey, solver, tuple(sorted(options.items())))
        hash(k)
    except TypeError:  # an unhashable option value (e.g. init=array): no reuse
        return _ScanEntry(Parallelized(_jaxpr_cell, solver=solver, name=_cell_name(f), **options)), refs
    entry = _SCAN_CACHE.get(k)
    if entry is not None:
        _SCAN_CACHE.move_to_end(k)
        return entry, refs
    entry = _SCAN_CACHE[k] = _ScanEntry(Parallelized(_jaxpr_cell, solver=solver, name=_cell_name(f), **options))
    while len(_SCAN_CACHE) > _SCAN_CACHE_SIZE:
        _SCAN_CACHE.popitem(last=False)
    return entry, refs


class _Body:
    """The traced body ``(carry, x) -> (carry, y)`` evaluated from its jaxpr with explicit consts."""

    def __init__(self, jaxpr, consts, c_tree, x_tree, n_carry, out_tree):
        self.jaxpr, self.consts, self.c_tree, self.x_tree = jaxpr, list(consts), c_tree, x_tree
        self.n_carry, self.out_tree = n_carry, out_tree

    def with_consts(self, consts) -> "_Body":
        return _Body(self.jaxpr, consts, self.c_tree, self.x_tree, self.n_carry, self.out_tree)

    def __call__(self, c, x):
        outs = _compat.eval_jaxpr(self.jaxpr, self.consts, *jax.tree_util.tree_leaves(c),
                                  *jax.tree_util.tree_leaves(x))
        carry = jax.tree_util.tree_unflatten(self.c_tree, outs[: self.n_carry])
        return carry, jax.tree_util.tree_unflatten(self.out_tree, outs[self.n_carry:])


def _jaxpr_cell(body: _Body, h, x):
    """autopar.scan's carry recurrence: the carry part of the traced body (a `Parallelized` of
    this, bound to one trace's `_Body`, is what solves it)."""
    return body(h, x)[0]


def _avals(tree, time_axis: bool = False):
    def aval(a):
        a = a if isinstance(a, jax.ShapeDtypeStruct) else jnp.asarray(a) if not isinstance(a, jax.Array) else a
        shape = a.shape[1:] if time_axis else a.shape
        return jax.ShapeDtypeStruct(shape, a.dtype, weak_type=bool(getattr(a, "weak_type", False)) and not time_axis)

    return [aval(a) for a in jax.tree_util.tree_leaves(tree)]


def _trace_body(f, init, xs):
    """(closed jaxpr of the flat body, carry-out avals, y treedef)."""
    c_leaves, c_tree = jax.tree_util.tree_flatten(init)
    x_tree = jax.tree_util.tree_structure(xs)
    n = len(c_leaves)
    box = {}

    def flat(*args):
        out = f(jax.tree_util.tree_unflatten(c_tree, args[:n]), jax.tree_util.tree_unflatten(x_tree, args[n:]))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"`f` must return a pair (new_carry, y) like the body of jax.lax.scan; got {type(out).__name__}.")
        cl, ct = jax.tree_util.tree_flatten(out[0])
        if ct != c_tree:
            raise TypeError(f"the body's carry output has pytree structure {ct}, but `init` has {c_tree}; "
                            "return a carry of the same structure as init.")
        yl, box["y_tree"] = jax.tree_util.tree_flatten(out[1])
        return [*cl, *yl]

    closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*_avals(init), *_avals(xs, time_axis=True))
    return closed, shapes[:n], box["y_tree"]


class _ScanTrace:
    """One input signature of one body: its jaxpr and consts, the plan of its carry recurrence,
    and the jitted program that runs the whole call (solve, ``y``, carry) as one dispatch."""

    @classmethod
    def build(cls, entry: _ScanEntry, f, refs: set, init, xs, length) -> "_ScanTrace":
        self = cls()
        closed, carry_out, y_tree = _trace_body(f, init, xs)
        # weakly typed init leaves (Python scalars) take the body's carry dtype, as lax.scan
        leaves, c_tree = jax.tree_util.tree_flatten(init)
        self.promote = []
        for l, o in zip(leaves, carry_out):
            weak = isinstance(l, _SCALARS) or bool(getattr(l, "weak_type", False))
            want = jnp.result_type(l, o.dtype) if weak and (np.shape(l) != o.shape or jnp.result_type(l) != o.dtype) else None
            self.promote.append(want)
        if any(d is not None for d in self.promote):
            init = self.promote_init(init)
            closed, carry_out, y_tree = _trace_body(f, init, xs)
        for k, (l, o) in enumerate(zip(jax.tree_util.tree_leaves(init), carry_out)):
            if np.shape(l) != o.shape or jnp.result_type(l) != o.dtype:
                raise TypeError(f"the body's carry output leaf {k} is {o.dtype}{list(o.shape)}, but `init`'s is "
                                f"{jnp.result_type(l)}{list(np.shape(l))}; return a carry of init's shapes and dtypes.")
        n = len(leaves)
        self.body = _Body(closed.jaxpr, (), c_tree, jax.tree_util.tree_structure(xs), n, y_tree)
        self.forwarded = [o is i for o, i in zip(closed.jaxpr.outvars[:n], closed.jaxpr.invars[:n])]
        # y leaves that are an x leaf itself (``return c, x``): returned as that input, outside the
        # program (as lax.scan's input-to-output forwarding), so the program never copies them
        x_in = closed.jaxpr.invars[n:]
        self.y_fwd = tuple(next((k for k, v in enumerate(x_in) if o is v), None) for o in closed.jaxpr.outvars[n:])
        # the plan of the carry recurrence (analysis cached in the entry's Parallelized)
        view = entry.fn._bind(self.body.with_consts(closed.consts))
        self.sig, self.key, cell_consts = view._lookup(init, xs, length)
        rec, facts, p = entry.fn._programs[self.key]
        self.fn, self.plan = entry.fn, p
        self.report = (rec, facts, p)
        if p.solver == "sequential":
            self.mode = "lax" if p.backward == "autodiff" else "implicit"
        else:
            self.mode = "parallel"
        self.sharded = p.shards is not None or entry.fn.options.get("mesh") is not None
        self.lazy = (self.mode == "parallel" and p.options.get("fallback", True) is not False
                     and len(get_solver(p.solver).chain()) >= 2)
        # one argument list for both traces' consts (the body's and the carry cell's), deduplicated
        args, index = [], {}

        def slot(c):
            if id(c) not in index:
                index[id(c)] = len(args)
                args.append(c)
            return index[id(c)]

        self.body_idx = [slot(c) for c in closed.consts]
        self.cell_idx = [slot(c) for c in cell_consts]
        self.cacheable = not any(isinstance(c, _compat.Tracer) for c in args)
        # captured arrays (the ones the body key names) are held weakly: the cache never keeps them alive
        self.args = [weakref.ref(c) if id(c) in refs else c for c in args]
        self.weak = [id(c) in refs for c in args]
        self.spec = (str(closed.jaxpr), c_tree, self.body.x_tree, y_tree, tuple(self.promote), tuple(self.forwarded),
                     self.y_fwd,
                     self.mode, self.key, tuple(self.body_idx), tuple(self.cell_idx), self.sharded, self.lazy)
        self.jitted = jax.jit(self._program, static_argnames=("length", "reverse", "unroll", "return_info"))
        self.post = jax.jit(self._post, static_argnames=("reverse",))
        return self

    def alive(self) -> bool:
        return all(not w or a() is not None for a, w in zip(self.args, self.weak))

    def consts(self) -> list:
        return [a() if w else a for a, w in zip(self.args, self.weak)]

    def promote_init(self, init):
        leaves, tree = jax.tree_util.tree_flatten(init)
        return jax.tree_util.tree_unflatten(tree, [
            l if d is None else jax.lax.convert_element_type(l, d) for l, d in zip(leaves, self.promote)])

    # ---- running -------------------------------------------------------------------------------
    def call(self, entry, init, xs, *, length, reverse, unroll, return_info):
        fn, args = entry.fn, self.consts()
        self = entry.program(self)  # the same program for the same jaxpr: only ``args`` differ
        kw = dict(length=length, reverse=reverse, unroll=unroll, return_info=return_info)
        try:
            if self.sharded or shard.time_axis_of(xs) is not None or (self.lazy and not any(
                    isinstance(a, _compat.Tracer) for a in jax.tree_util.tree_leaves((args, init, xs)))):
                # time-sharded inputs (the entry point reads concrete shardings), or an eager call of a
                # Newton plan (its lazy fallback chain): the solve as a call of its own, then the rest
                return self._fill_forwarded(self._solve_then_post(fn, args, init, xs, **kw), init, xs, return_info)
            if self.mode == "lax" and any(isinstance(a, _compat.Tracer)
                                          for a in jax.tree_util.tree_leaves((args, init, xs))):
                # inside the caller's trace: lax.scan itself, with no program around it, so the
                # caller's jaxpr is lax.scan's (its scan equation, effects and forwarding visible)
                return self._program_full(args, init, xs, **kw)
            return self._fill_forwarded(self.jitted(args, init, xs, **kw), init, xs, return_info)
        except TypeError as e:
            err = _forward_mode_error(e, sharded=self.sharded or shard.time_axis_of(xs) is not None)
            if err is None:
                raise
            raise err from e

    def _solve_then_post(self, fn, args, init, xs, *, length, reverse, unroll, return_info):
        init = self.promote_init(init)
        view = fn._bind(self.body.with_consts([args[i] for i in self.body_idx]))
        out = view(init, xs, length=length, reverse=reverse, return_info=return_info)
        hs, info = out if return_info else (out, None)
        res = self._strip_forwarded(self.post(args, init, xs, hs, reverse=reverse))
        return (res, info) if return_info else res

    def _strip_forwarded(self, res):
        """``(carry, ys)`` as flat lists, the forwarded leaves left out (None): carry leaves the body
        returns unchanged (``forwarded``) and y leaves that are an x leaf (``y_fwd``)."""
        carry, ys = res
        return ([None if w else l for l, w in zip(jax.tree_util.tree_leaves(carry), self.forwarded)],
                [None if k is not None else l for l, k in zip(jax.tree_util.tree_leaves(ys), self.y_fwd)])

    def _fill_forwarded(self, out, init, xs, return_info):
        """The result of `_program` with the forwarded leaves put back, outside the program, as the
        inputs themselves (lax.scan's read-only carry and input-to-output forwarding: under
        ``vmap(cond(...))`` an unbatched carry stays unbatched; no copy of a forwarded x)."""
        (carry, ys), info = out if return_info else (out, None)
        init_l = jax.tree_util.tree_leaves(self.promote_init(init))
        x_l = jax.tree_util.tree_leaves(xs)
        carry = jax.tree_util.tree_unflatten(self.body.c_tree, [  # the init value itself, as lax.scan
            i if w else l for l, i, w in zip(carry, init_l, self.forwarded)])
        ys = jax.tree_util.tree_unflatten(self.body.out_tree, [x_l[k] if k is not None else l
                                                               for l, k in zip(ys, self.y_fwd)])
        return ((carry, ys), info) if return_info else (carry, ys)

    def _program(self, args, init, xs, *, length, reverse, unroll, return_info):
        out = self._program_full(args, init, xs, length=length, reverse=reverse, unroll=unroll,
                                 return_info=return_info)
        return (self._strip_forwarded(out[0]), out[1]) if return_info else self._strip_forwarded(out)

    def _program_full(self, args, init, xs, *, length, reverse, unroll, return_info):
        fn = self.fn
        init = self.promote_init(init)
        if self.mode == "lax":
            body = self.body.with_consts([args[i] for i in self.body_idx])
            out = jax.lax.scan(body, init, xs, length=length, reverse=reverse, unroll=unroll)
            if not return_info:
                return out
            return out, self._exact_info(length if xs is None else None, xs)
        if self.mode == "implicit" and not return_info:
            def one_pass(args, init, xs):
                body = self.body.with_consts([args[i] for i in self.body_idx])
                return jax.lax.scan(body, init, xs, length=length, reverse=reverse, unroll=unroll)

            def two_pass(args, init, xs):
                return self._two_pass(fn, args, init, xs, length, reverse, False)[0]

            run = jax.custom_jvp(one_pass)
            run.defjvp(lambda primals, tangents: jax.jvp(two_pass, primals, tangents))
            return run(args, init, xs)
        out, info = self._two_pass(fn, args, init, xs, length, reverse, return_info)
        return (out, info) if return_info else out

    def _two_pass(self, fn, args, init, xs, length, reverse, return_info):
        """The carry trajectory by the planned solver (differentiable by the planned adjoint), then
        every y from one vmapped pass of the body over (previous carry, x)."""
        cell_consts = [args[i] for i in self.cell_idx]
        hs, info = fn._jitted(cell_consts, init, xs, None, key=self.key, length=length, reverse=reverse)
        if return_info:
            res = fn._residual_jitted(cell_consts, init, xs, hs, key=self.key, reverse=reverse)
            info = emit.unpack(info).with_residual(res)
        return self._post(args, init, xs, hs, reverse=reverse), info

    def _exact_info(self, length, xs):
        from .emit import Info

        T = trace.xs_length(xs, length)
        p = self.plan
        return Info(jnp.asarray(0, jnp.int32), jnp.asarray(T, jnp.int32), jnp.asarray(True), jnp.zeros((), jnp.float32),
                    None, jnp.asarray(Result.converged, jnp.int32), get_solver("sequential").chain(), p.solver,
                    p.backward)

    def _post(self, args, init, xs, hs, *, reverse):
        """(carry, ys) from the carry trajectory ``hs``, ``y_t`` = f(h_{t−1}, x_t)[1] vmapped; carry
        leaves the body returns unchanged are init broadcast over time (the call returns init
        itself for them: `_fill_forwarded`)."""
        body = self.body.with_consts([args[i] for i in self.body_idx])
        fw = jax.tree_util.tree_unflatten(self.body.c_tree, self.forwarded)
        if any(self.forwarded):
            hs = jax.tree_util.tree_map(lambda h, i, w: jnp.broadcast_to(jnp.asarray(i, h.dtype), h.shape) if w else h,
                                        hs, init, fw)
        T = jax.tree_util.tree_leaves(hs)[0].shape[0] if jax.tree_util.tree_leaves(hs) else None
        if T == 0:
            y = jax.eval_shape(lambda c, x: body(c, x)[1], init, _step_avals(xs))
            return init, jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape), s.dtype), y)
        first = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], init)
        if reverse:  # step t (processing x_t) reads the carry after x_{t+1}
            prev = jax.tree_util.tree_map(lambda h, a: jnp.concatenate([h[1:], a], 0), hs, first)
            carry = jax.tree_util.tree_map(lambda h: h[0], hs)
        else:
            prev = jax.tree_util.tree_map(lambda a, h: jnp.concatenate([a, h[:-1]], 0), first, hs)
            carry = jax.tree_util.tree_map(lambda h: h[-1], hs)
        if xs is None:
            ys = jax.vmap(lambda c: body(c, None)[1])(prev)
        else:
            ys = jax.vmap(lambda c, x: body(c, x)[1])(prev, xs)
        return carry, ys


def _step_avals(xs):
    return None if xs is None else jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], jnp.result_type(a)), xs)


def explain(f: Callable, init: Any, xs: Any = None, length: int | None = None, *, solver: str | None = None, **options: Any) -> Report:
    """The `Report` for a ``lax.scan``-style ``f(carry, x) -> (carry, y)``.

    What `scan` with the same arguments would prove and run; nothing is compiled.
    """
    entry, refs = _scan_entry(f, solver, options)
    rec, facts, p = entry.trace(f, refs, init, xs, length).report
    return Report(rec.name, facts, p, rec.layout, rec.length)
