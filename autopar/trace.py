"""Stage 1: trace a user's cell into the ``Recurrence`` IR.

A cell ``h_new = cell(h, x)`` with ``h`` any pytree is traced once to a closed
jaxpr. Its state leaves are split in two:

* *differentiable* leaves (floating or complex) are raveled into one flat vector
  ``v`` of size ``D`` (the solvers' state; J = ∂v_new/∂v is D × D), and
* *discrete* leaves (integer / bool) are solved on their own, exactly, before the
  float state; they then enter the float recurrence as exogenous inputs.

Everything later in the pipeline reads the ``Recurrence`` and never re-traces
the user's function. Closed-over arrays become explicit ``consts`` so that they
are differentiable inputs of the emitted program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat
from .errors import check_same_structure, raise_for_tracing_error, validate_leaves

__all__ = ["LeafInfo", "StateLayout", "Recurrence", "trace_cell", "xs_length"]


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One state leaf: where it sits in the pytree and in the flat vector."""

    path: str  # human-readable key path, e.g. "h0[1]['c']"
    shape: tuple[int, ...]
    dtype: np.dtype
    differentiable: bool
    offset: int  # start in the flat vector (differentiable leaves only, else -1)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """How the state pytree maps to the flat differentiable vector and discrete leaves."""

    treedef: Any
    leaves: tuple[LeafInfo, ...]
    vec_dtype: np.dtype  # dtype of the flat vector the solvers work in
    mixed_complex: bool  # real and complex leaves together (parallel solvers decline)

    @property
    def size(self) -> int:
        """D: length of the flat differentiable vector."""
        return sum(l.size for l in self.leaves if l.differentiable)

    @property
    def diff_leaves(self) -> tuple[LeafInfo, ...]:
        return tuple(l for l in self.leaves if l.differentiable)

    @property
    def discrete_leaves(self) -> tuple[LeafInfo, ...]:
        return tuple(l for l in self.leaves if not l.differentiable)

    def ravel(self, leaves: Sequence[Any]) -> tuple[jax.Array, list[jax.Array]]:
        """State leaves (pytree order) -> (flat vector, discrete leaves). Works batched over
        leading axes shared by all leaves only if called under vmap."""
        parts = [jnp.asarray(l).astype(self.vec_dtype) for i, l in zip(self.leaves, leaves) if i.differentiable]
        disc = [jnp.asarray(l) for i, l in zip(self.leaves, leaves) if not i.differentiable]
        return self.join(parts), disc

    def unravel(self, vec: jax.Array, discrete: Sequence[Any]) -> list[jax.Array]:
        """Inverse of :meth:`ravel` (one time step)."""
        parts, disc = iter(self.split(vec)), iter(discrete)
        return [_cast_back(next(parts), i.dtype) if i.differentiable else next(disc) for i in self.leaves]

    def split(self, vec: jax.Array) -> list[jax.Array]:
        """Flat vector -> the differentiable leaves in their shapes (kept in ``vec_dtype``)."""
        return [vec[l.offset : l.offset + l.size].reshape(l.shape) for l in self.diff_leaves]

    def join(self, parts: Sequence[jax.Array]) -> jax.Array:
        """Inverse of :meth:`split`."""
        if not parts:
            return jnp.zeros((0,), self.vec_dtype)
        return jnp.concatenate([jnp.ravel(p) for p in parts])

    def describe(self) -> list[str]:
        rows = []
        for l in self.leaves:
            where = f"v[{l.offset}:{l.offset + l.size}]" if l.differentiable else "discrete (solved exactly)"
            rows.append(f"{l.path}: {np.dtype(l.dtype).name}{list(l.shape)} -> {where}")
        return rows


def _cast_back(part: jax.Array, dtype: np.dtype) -> jax.Array:
    if jnp.iscomplexobj(part) and not jnp.issubdtype(dtype, jnp.complexfloating):
        part = part.real
    return part.astype(dtype)


def _vector_dtype(dtypes: Sequence[np.dtype]) -> tuple[np.dtype, bool]:
    if not dtypes:
        return np.dtype(jnp.float32), False
    promoted = []
    for d in dtypes:
        # Low-precision floats are solved in float32 and cast back per step.
        if jnp.issubdtype(d, jnp.floating) and np.dtype(d).itemsize < 4:
            d = np.dtype(jnp.float32)
        promoted.append(d)
    vec = np.dtype(jnp.result_type(*promoted))
    has_c = any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
    has_r = any(not jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
    return vec, bool(has_c and has_r)


@dataclasses.dataclass(frozen=True, eq=False)
class Recurrence:
    """The IR every later stage reads.

    ``step_jaxpr`` is the flat view the analysis passes read:
    ``(v, *discrete_state, *x_leaves) -> (v_new, *discrete_state_new)`` with the
    closed-over values as its constvars. ``state_invar`` is the index of ``v``.
    ``consts`` are the values of its constvars, passed explicitly at run time.
    """

    layout: StateLayout
    x_treedef: Any
    x_avals: tuple[jax.ShapeDtypeStruct, ...]  # one time step of each input leaf
    length: int  # T
    step_jaxpr: _compat.ClosedJaxpr  # constvars = consts
    cell_jaxpr: _compat.ClosedJaxpr  # the user's cell on leaves, for reports and structure passes
    discrete_depends_on_float: bool  # discrete outputs read the float state
    name: str = "cell"

    state_invar: int = 0

    @property
    def consts(self) -> list[Any]:
        return list(self.step_jaxpr.consts)

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def n_discrete(self) -> int:
        return len(self.layout.discrete_leaves)

    def step(self, consts: Sequence[Any], v, discrete: Sequence[Any], x_leaves: Sequence[Any]):
        """Evaluate one step: returns (v_new, discrete_new). Differentiating it applies the cell's
        own custom rules — what ``jax.grad`` of ``lax.scan`` does: the adjoint uses this."""
        outs = _compat.eval_jaxpr(self.step_jaxpr.jaxpr, list(consts), v, *discrete, *x_leaves)
        return outs[0], list(outs[1:])

    def primal_step(self, consts: Sequence[Any], v, discrete: Sequence[Any], x_leaves: Sequence[Any]):
        """``step`` with every custom_vjp call inlined as its primal function: the same values, and
        forward mode works on it (JAX cannot push a JVP into a custom_vjp). The forward solvers
        linearise this one: Newton's Jacobian is the primal's, whatever a custom backward rule
        (gradient clipping, say) does to gradients."""
        if not self.has_custom_vjp:
            return self.step(consts, v, discrete, x_leaves)
        outs = _compat.eval_jaxpr_inlined(self.step_jaxpr.jaxpr, list(consts), v, *discrete, *x_leaves)
        return outs[0], list(outs[1:])

    @functools.cached_property
    def has_custom_vjp(self) -> bool:
        """Whether the step calls a custom_vjp anywhere (nested calls and loops included)."""
        return _compat.has_custom_vjp(self.step_jaxpr)

    def signature(self) -> tuple:
        """Hashable key of everything the analysis depends on (not const values); computed once."""
        return self._signature

    @functools.cached_property
    def _signature(self) -> tuple:
        return (
            self.layout.treedef,
            tuple((l.shape, np.dtype(l.dtype).str) for l in self.layout.leaves),
            self.x_treedef,
            tuple((a.shape, np.dtype(a.dtype).str) for a in self.x_avals),
            str(self.step_jaxpr.jaxpr),
        )


def xs_length(xs: Any, length: int | None, *, argname: str = "xs") -> int:
    """Validate the leading axis of every ``xs`` leaf and return T."""
    leaves_with_path = jax.tree_util.tree_leaves_with_path(xs)
    lengths = {}
    for path, leaf in leaves_with_path:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"`{argname}{jax.tree_util.keystr(path)}` is a scalar, but every leaf of `{argname}` "
                "needs a leading time axis (shape (T, ...)). Stack your inputs along axis 0."
            )
        lengths[jax.tree_util.keystr(path)] = shape[0]
    distinct = set(lengths.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{argname}{k}: {v}" for k, v in lengths.items())
        raise ValueError(
            f"every leaf of `{argname}` must have the same leading (time) length; got {listing}. "
            "Pad or slice the inputs to one length T."
        )
    if distinct:
        T = distinct.pop()
        if length is not None and int(length) != T:
            raise ValueError(
                f"`length={length}` disagrees with the leading axis of `{argname}` ({T}). "
                "Pass one or make them agree."
            )
        return int(T)
    if length is None:
        raise ValueError(
            f"`{argname}` has no array leaves, so the number of steps is unknown: pass `length=T`."
        )
    if int(length) < 0:
        raise ValueError(f"`length` must be >= 0; got {length}.")
    return int(length)


def trace_cell(cell: Callable, h0: Any, xs: Any, length: int | None = None, *, name: str | None = None) -> Recurrence:
    """Trace ``cell(h, x) -> h_new`` at the signature of ``(h0, xs[0])``."""
    if not callable(cell):
        raise TypeError(f"`cell` must be callable as cell(h, x) -> new_h; got {type(cell).__name__}: {cell!r}.")
    validate_leaves(h0, "h0")
    validate_leaves(xs, "xs")
    T = xs_length(xs, length)

    h_leaves_p, treedef = jax.tree_util.tree_flatten_with_path(h0)
    h_leaves = [jnp.asarray(l) for _, l in h_leaves_p]
    x_leaves, x_treedef = jax.tree_util.tree_flatten(xs)
    x_avals = tuple(jax.ShapeDtypeStruct(np.shape(l)[1:], jnp.asarray(l).dtype) for l in x_leaves)

    infos, offset = [], 0
    for (path, _), leaf in zip(h_leaves_p, h_leaves):
        diff = bool(jnp.issubdtype(leaf.dtype, jnp.inexact))
        info = LeafInfo("h0" + jax.tree_util.keystr(path), tuple(leaf.shape), np.dtype(leaf.dtype), diff, offset if diff else -1)
        offset += info.size if diff else 0
        infos.append(info)
    vec_dtype, mixed = _vector_dtype([i.dtype for i in infos if i.differentiable])
    layout = StateLayout(treedef, tuple(infos), vec_dtype, mixed)

    h_avals = [jax.ShapeDtypeStruct(l.shape, l.dtype, weak_type=getattr(l, "weak_type", False)) for l in h_leaves]

    def leaf_cell(*args):
        hs = jax.tree_util.tree_unflatten(treedef, args[: len(h_leaves)])
        x = jax.tree_util.tree_unflatten(x_treedef, args[len(h_leaves) :])
        return cell(hs, x)

    try:
        cell_jaxpr, out_shape = jax.make_jaxpr(leaf_cell, return_shape=True)(*h_avals, *x_avals)
    except Exception as e:  # noqa: BLE001 - re-raised with a human message
        raise_for_tracing_error(e, name or getattr(cell, "__name__", "cell"))
        raise
    check_same_structure(h0, out_shape, treedef)

    disc_infos = layout.discrete_leaves

    def flat_step(v, *rest):
        disc = rest[: len(disc_infos)]
        xl = rest[len(disc_infos) :]
        leaves = layout.unravel(v, disc)
        outs = _compat.eval_jaxpr(cell_jaxpr.jaxpr, cell_jaxpr.consts, *leaves, *xl)
        v_new, disc_new = layout.ravel(outs)
        return (v_new, *disc_new)

    v_aval = jax.ShapeDtypeStruct((layout.size,), vec_dtype)
    disc_avals = [jax.ShapeDtypeStruct(l.shape, l.dtype) for l in disc_infos]
    step_jaxpr = jax.make_jaxpr(flat_step)(v_aval, *disc_avals, *x_avals)

    depends = False
    if disc_infos:
        used_out = [False] + [True] * len(disc_infos)
        _, used_in = _compat.dce(step_jaxpr, used_out)
        depends = bool(used_in[0])

    return Recurrence(
        layout=layout,
        x_treedef=x_treedef,
        x_avals=x_avals,
        length=T,
        step_jaxpr=step_jaxpr,
        cell_jaxpr=cell_jaxpr,
        discrete_depends_on_float=depends,
        name=name or getattr(cell, "__name__", "cell"),
    )
