r"""Loop-independent code motion for the sequential loop: the part of a step that does not read
the state is computed for all T steps at once, before the loop.

A step ``v_t = f(v_{t-1}, x_t)`` usually spends much of its time on work that reads only the
input: an input projection ``x @ W``, a gate's ``softplus(x @ W_Δ)``, the decay
``exp(Δ(x) · A)``. In a ``lax.scan`` that work runs T times, one small kernel per step, each
paying XLA:CPU's fixed per-kernel cost (``K.op_overhead``); once a loop body holds more than
eight kernels, XLA:CPU's thunk executor also leaves its in-order mode for a dataflow one that
costs a few hundred ns more per step (measured, JAX 0.10.2, 2-core EPYC: the README's Mamba step
467 ns with its three x-only matvecs in the loop, 147 ns without). Moved out, the same work is one
vectorised evaluation over T (``jax.vmap``), at ``K.par_flops``.

``split_step`` cuts a step's jaxpr by data dependence, one top-level equation at a time
(an equation is never split inside, so a ``custom_jvp`` / ``custom_vjp`` call keeps its rule):

* *outer*: equations that read no state — those that read an input are evaluated over T
  (batched), those that read only constants once (unbatched);
* *inner*: the rest, the loop body, reading the state and the outer values it needs (the
  residuals, r_t).

The values are the same equations on the same operands; XLA may fuse them differently, so the
trajectory can differ from the unsplit loop's by rounding.

``worthwhile``: the split is used only when the outer, batched part holds at least one
non-fusable kernel (``costs.step_ops``; elementwise work fuses into the loop body and costs
little there), or a small matrix product or reduction (``costs.loop_thunk_ops``: XLA:CPU runs
even a 4×4 matvec as a thunk of its own) when the whole step would run past ``THUNK_LIMIT``
thunks (``Split.loop_thunks``): a small DeltaNet's reverse adjoint loop, 817 → 102 ns a step
moved out, while a D = 2 SSM's one 2×2 matvec is cheaper left in (11 vs 34 ns a step). And
only when the residuals a step reads are no more than ``RESIDUAL_FACTOR`` × (state + input)
floats plus ``RESIDUAL_SLACK`` (an x-dependent dense transition, D² floats a step, is left in
the loop: storing it for all T would cost more memory than the loop saves).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from . import _compat, costs

__all__ = ["Split", "split_step", "hoisted", "RESIDUAL_FACTOR", "RESIDUAL_SLACK", "THUNK_LIMIT"]

#: The residuals a step may read, as a multiple of its state + input floats (plus the slack).
RESIDUAL_FACTOR = 4
RESIDUAL_SLACK = 64
#: XLA:CPU's thunk executor runs a loop body in order up to this many thunks
#: (``execute_sequential_num_thunks_threshold``), past it in a dataflow mode costing a few hundred ns a step.
THUNK_LIMIT = 8


@dataclasses.dataclass(frozen=True)
class Split:
    """A step's jaxpr cut in two (``split_step``).

    ``outer(x inputs) -> residuals`` and ``inner(state inputs, residuals) -> outputs`` are closed
    jaxprs; ``batched[i]``: residual i reads an input (else only constants: computed once).
    ``residual_floats``: elements of the batched residuals of one step; ``outer_ops`` /
    ``outer_flops`` the (real, complex) kernels and flops of the batched outer part;
    ``inner_ops`` / ``inner_flops`` those of the loop body; ``state_floats`` / ``input_floats``
    the elements of the step's state and per-step inputs (its invars); ``outer_thunk_ops`` /
    ``inner_thunk_ops`` the loop-body thunks of each part's ops (``costs.loop_thunk_ops``);
    ``outer_row_ops`` the equations the batched outer part runs over T rows (``costs.row_ops``)."""

    outer: Any
    inner: Any
    batched: tuple
    residual_floats: int
    outer_ops: tuple
    outer_flops: float
    inner_ops: tuple
    inner_flops: float
    state_floats: int
    input_floats: int
    outer_thunk_ops: int = 0
    inner_thunk_ops: int = 0
    outer_row_ops: int = 0

    def worthwhile(self, extra_input_floats: int = 0) -> bool:
        """Whether the loop should use the split (see the module docstring); ``extra_input_floats``:
        per-step inputs the loop reads that this jaxpr does not take (a pricing trace of the
        adjoint's body has λ as its state, the loop also slices ḡ_t)."""
        moves_a_kernel = sum(self.outer_ops) >= 1
        leaves_the_dataflow_mode = self.outer_thunk_ops >= 1 and self.loop_thunks() > THUNK_LIMIT
        if not (moves_a_kernel or leaves_the_dataflow_mode):
            return False
        budget = RESIDUAL_FACTOR * (self.state_floats + self.input_floats + extra_input_floats) + RESIDUAL_SLACK
        return self.residual_floats <= budget

    def loop_thunks(self) -> int:
        """Thunks XLA:CPU would run per step for the whole step in a loop, roughly
        (``costs.loop_thunk_ops``, ``costs.LOOP_BASE_THUNKS``)."""
        return costs.LOOP_BASE_THUNKS + self.outer_thunk_ops + self.inner_thunk_ops


def _size(aval) -> int:
    return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def split_step(closed, n_state: int, n_outputs: int | None = None) -> Split | None:
    """Cut ``closed`` (invars: ``n_state`` state inputs, then the inputs read per step) into the
    part that reads no state and the loop body; keep the first ``n_outputs`` outputs (all by
    default). None when there is nothing to move, or the step has effects (their order matters)."""
    if closed.effects:
        return None
    n_out = len(closed.jaxpr.outvars) if n_outputs is None else n_outputs
    closed, _ = _compat.dce(closed, [i < n_out for i in range(len(closed.jaxpr.outvars))])  # dead work moves nothing
    jp = closed.jaxpr
    state_in, x_in = list(jp.invars[:n_state]), list(jp.invars[n_state:])
    hot = set(state_in)  # reads the state
    xdep = set(x_in)  # reads an input (and not the state)
    outer_x, inner, outer_eqns = [], [], []
    for eqn in jp.eqns:
        ins = [v for v in eqn.invars if not _compat.is_literal(v)]
        if eqn.effects:
            return None
        if any(v in hot for v in ins):
            inner.append(eqn)
            hot.update(eqn.outvars)
        elif any(v in xdep for v in ins):
            outer_x.append(eqn)
            outer_eqns.append(eqn)
            xdep.update(eqn.outvars)
        else:
            outer_eqns.append(eqn)
    if not outer_x:
        return None
    defined_outer = set(x_in)
    for eqn in outer_eqns:
        defined_outer.update(eqn.outvars)
    residuals, seen = [], set()

    def need(v):
        if not _compat.is_literal(v) and v in defined_outer and v not in seen:
            seen.add(v)
            residuals.append(v)

    for eqn in inner:
        for v in eqn.invars:
            need(v)
    for v in jp.outvars:
        need(v)
    outer = _compat.ClosedJaxpr(_compat.Jaxpr(jp.constvars, x_in, residuals, outer_eqns), closed.consts)
    inner_jp = _compat.Jaxpr(jp.constvars, state_in + residuals, jp.outvars, inner)
    batched = tuple(v in xdep for v in residuals)
    xpart = _compat.Jaxpr(jp.constvars, x_in, [v for v in residuals if v in xdep], outer_x)
    return Split(outer, _compat.ClosedJaxpr(inner_jp, closed.consts), batched,
                 sum(_size(v.aval) for v, b in zip(residuals, batched) if b),
                 costs.step_ops(xpart), costs.step_flops(xpart), costs.step_ops(inner_jp), costs.step_flops(inner_jp),
                 sum(_size(v.aval) for v in state_in), sum(_size(v.aval) for v in x_in), costs.loop_thunk_ops(xpart),
                 costs.loop_thunk_ops(inner_jp), costs.row_ops(xpart))


def hoisted(f: Callable, v0, xt) -> tuple[Callable, Any] | None:
    """``(g, rt)`` with ``g(v, r_t) == f(v, xt_t)`` for every t, ``rt`` the outer part of ``f``
    evaluated over the leading axis of ``xt`` (``jax.vmap``); ``f`` returns a state shaped as
    ``v0``. None when the split is not worthwhile (``Split.worthwhile``) or ``xt`` has no leaves."""
    x_leaves, x_tree = jax.tree.flatten(xt)
    if not x_leaves:
        return None
    v_leaves, v_tree = jax.tree.flatten(v0)

    def flat(*a):
        v = v_tree.unflatten(a[: len(v_leaves)])
        return jax.tree.leaves(f(v, x_tree.unflatten(a[len(v_leaves):])))

    examples = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in v_leaves]
    examples += [jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype) for a in x_leaves]
    closed = jax.make_jaxpr(flat)(*examples)
    split = split_step(closed, len(v_leaves))
    if split is None or not split.worthwhile():
        return None
    outer = _compat.jaxpr_as_fun(split.outer)
    inner = _compat.jaxpr_as_fun(split.inner)
    res = jax.vmap(outer, out_axes=[0 if b else None for b in split.batched])(*x_leaves)
    per_step = [r for r, b in zip(res, split.batched) if b]
    fixed = [r for r, b in zip(res, split.batched) if not b]

    def g(v, r_t):
        it_t, it_c = iter(r_t), iter(fixed)
        rs = [next(it_t) if b else next(it_c) for b in split.batched]
        return v_tree.unflatten(inner(*jax.tree.leaves(v), *rs))

    return g, per_step
