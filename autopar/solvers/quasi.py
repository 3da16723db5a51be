r"""diag(J_t) for the quasi solvers, without forming a dense Jacobian.

``diagonal_steps(f, structure, points, xt)`` returns (f(points_t, x_t), d_t) with
d_t = diag(∂f/∂v) at points_t, by the cheapest exact route the proven structure
allows:

* zero / identity / scalar / diagonal: the compact form *is* the diagonal (≤ 1 JVP);
* block-diagonal with blocks of size b: b JVPs (compressed extraction), then the
  blocks' diagonals — O(b · cost(f)), and only T·D·b floats;
* dense: the **diagonal-Jacobian interpreter** below, O(D²) per step for the usual
  cells; if the cell is outside what it handles, D JVPs evaluated in time chunks
  (``lax.map``) so that no T·D² array ever exists.

**The interpreter.** It evaluates the step's jaxpr once, carrying for every
intermediate y (row shape S) its Jacobian ∂y/∂v as a short sum of *terms*:

    Sel(s, idx):        ∂y_r/∂v = s_r · e_{idx_r}ᵀ                 (y_r reads one state entry)
    Lin(s, C, inner):   ∂y/∂v  = diag(s) · C · (inner term)          (C: S × m, h-independent)

A term's chain has at most two ``Lin`` levels. Rules: elementwise primitives scale
``s`` by their elementwise partial (one JVP with a tangent of ones — exact because
the primitive is elementwise); shape primitives (slice, reshape, transpose,
broadcast, concatenate, split, pad, gather, …) act on the rows of s, idx and C; a
primitive linear in its one h-dependent operand (dot_general with an h-independent
other side, reduce_sum, cumsum) wraps each term: Lin(1, L, term) with L its
matrix, taken once from the h-independent operand (unbatched under the vmap over
time, so computed once per iteration, not per step). Only the diagonal of the
output is ever read:

    Sel:                 d_i += s_i [idx_i = i]
    Lin(s, C, Sel(s1, idx1)):
                         d_i += s_i Σ_{k: idx1_k = i} C_{i k} s1_k
    Lin(s, C1, Lin(s1, C2, Sel(s2, idx2))):
                         d_i += s_i Σ_{l: idx2_l = i} s2_l (K s1)_l,   K_{l k} = C1_{idx2_l, k} C2_{k l}

K is h-independent, so each step costs one matrix-vector product: O(D²). This
covers Elman/tanh RNNs, LSTM (gates W h: one level), GRU (W_n (r ⊙ h) with
r = σ(W_r h): two levels) and one-hidden-layer neural ODEs. A third ``Lin`` level
(e.g. a two-hidden-layer MLP in the step), a product of two h-dependent matrices,
control flow on h, or an unknown primitive raise ``Unsupported``, and the chunked
JVP route is used instead (exact, O(D · cost(f)) per step).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from autopar import _compat, primitives
from autopar.structure import Dense

from .linear import linearize_steps

__all__ = ["diagonal_steps", "jacobian_diagonal", "Unsupported", "chunked_dense_diagonal"]

#: Floats per chunk (chunk_size · D²) for the chunked-JVP fallback.
_CHUNK_FLOATS = 1 << 22


def diagonal_steps(f, structure, points, xt, *, method: str = "auto"):
    """(f(points_t, xt_t), diag J_t) for every t; points (T, D)."""
    D = points.shape[-1]
    if structure.cheap_diagonal or (method == "jvp" and structure.n_jvps < D):
        fv, a = linearize_steps(f, structure, points, xt)
        d = jax.vmap(structure.diagonal, axis_size=points.shape[0])(a)
        return fv, jnp.broadcast_to(d, points.shape).astype(points.dtype)
    if method in ("auto", "interpret"):
        try:
            return interpreted_diagonal(f, points, xt)
        except Unsupported:
            if method == "interpret":
                raise
    return chunked_dense_diagonal(f, points, xt)


def _primal_differentiable(f, points, xt):
    """``f`` with its custom_vjp calls replaced by their primals (``jax.linearize`` cannot enter a
    custom_vjp; the forward problem's Jacobian is the primal's)."""
    p0 = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    x0 = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xt)
    closed = jax.make_jaxpr(f)(p0, x0)
    inlined = _compat.inline_custom_vjp(closed)
    if inlined is closed:
        return f
    out_tree = jax.tree_util.tree_structure(jax.eval_shape(f, p0, x0))

    def g(v, x):
        outs = _compat.eval_jaxpr_inlined(inlined.jaxpr, inlined.consts, v, *jax.tree_util.tree_leaves(x))
        return jax.tree_util.tree_unflatten(out_tree, outs)

    return g


def chunked_dense_diagonal(f, points, xt):
    """D JVPs per step, evaluated in chunks of time so peak memory is chunk · D², not T · D²."""
    T, D = points.shape
    f = _primal_differentiable(f, points, xt)
    chunk = int(max(1, min(T, _CHUNK_FLOATS // max(D * D, 1))))

    def one(args):
        p, x = args
        val, jvp = jax.linearize(lambda v: f(v, x), p)
        return val, jnp.diagonal(Dense(D).extract(jvp, p.dtype))

    return jax.lax.map(one, (points, xt), batch_size=chunk)


# ---------------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------------
class Unsupported(Exception):
    """The step is outside what the diagonal interpreter handles (message: why)."""


@dataclasses.dataclass
class Sel:
    s: Any  # (S,)
    idx: Any  # (S,) int

    depth = 0

    def rows(self, g, gi=None):
        return Sel(g(self.s), (gi or g)(self.idx))

    def scale(self, p):
        return Sel(self.s * p, self.idx)


@dataclasses.dataclass
class Lin:
    s: Any  # (S,)
    C: Any  # S + (m,)
    inner: Any  # Sel | Lin over m flat rows

    @property
    def depth(self):
        return 1 + self.inner.depth

    def rows(self, g, gi=None):
        return Lin(g(self.s), jax.vmap(g, in_axes=-1, out_axes=-1)(self.C), self.inner)

    def scale(self, p):
        return Lin(self.s * p, self.C, self.inner)


MAX_DEPTH = 2
MAX_TERMS = 64


def _flatten(term):
    return term.rows(lambda a: a.reshape(-1))


def _shape_of(term):
    return jnp.shape(term.s)


def _linear_map(t) -> bool:
    """Linear in a single h-dependent operand, mixing elements (dot_general, reduce_sum, cumsum, conv)."""
    return t.multilinear and t.dataflow in ("contraction", "reduction", "cumulative")


def _zero(dtype):
    return np.zeros((), dtype)


class _Diagonal(_compat.Interpreter):
    """Values are (value, terms | None) pairs; a call on h is walked (custom_vjp calls too: the
    forward problem differentiates their primal), except custom_jvp calls (see ``_custom_jvp``)."""

    def literal(self, atom):
        return _compat.literal_value(atom), None

    def const(self, var, c):
        return c, None

    def enters(self, eqn, ins):
        return any(t is not None for _, t in ins) and not _compat.is_custom_jvp(eqn)

    def equation(self, eqn, ins):
        return _apply(eqn, ins)


def _eval_jaxpr(jaxpr, consts, args):
    """Evaluate ``jaxpr`` on (value, terms|None) pairs."""
    return _compat.evaluate(jaxpr, list(args), _Diagonal(), consts=[(c, None) for c in consts])


def _bind(eqn, vals):
    """Every equation is evaluated through ``_compat.bind_eqn`` (``get_bind_params``: call
    primitives such as custom_jvp_call take their sub-jaxprs as ``subfuns``)."""
    return _compat.bind_eqn(eqn, vals)


def _bind1(eqn, vals):
    return _bind(eqn, vals)[0]


def _apply(eqn, ins):
    vals = [v for v, _ in ins]
    terms = [t for _, t in ins]
    name = eqn.primitive.name
    dep = [t is not None for t in terms]
    if not any(dep):
        return [(o, None) for o in _bind(eqn, vals)]
    if _compat.is_custom_jvp(eqn):
        return _custom_jvp(eqn, vals, terms)
    t = primitives.row(name)
    if t is None:
        raise Unsupported(f"no diagonal rule for primitive {name!r}")
    outs = _bind(eqn, vals)
    slot = t.rules.get("diagonal")
    if slot is not None:
        return slot(eqn, vals, terms, outs)
    if t.elementwise:
        return _elementwise(eqn, vals, terms, outs)
    if t.selects:  # moves rows without arithmetic: apply it to s, idx and C's rows
        if any(dep[1:]):
            raise Unsupported(f"{name} with an h-dependent index operand")
        rest = vals[1:]
        g = lambda a: _bind1(eqn, [a, *rest])  # noqa: E731
        return [(outs[0], [u.rows(g) for u in terms[0]])]
    if _linear_map(t):
        if sum(dep) != 1:
            raise Unsupported(f"{name} of two h-dependent operands (not linear in h)")
        j = dep.index(True)
        return [(outs[0], _linear(eqn, vals, j, terms[j], outs[0]))]
    raise Unsupported(f"no diagonal rule for primitive {name!r}")


# ---- ``diagonal`` slots of the trait table: rule(eqn, vals, terms, outs) -> [(value, terms)] -----
@primitives.defrule("diagonal", "split")
def _split(eqn, vals, terms, outs):
    res = []
    for k, o in enumerate(outs):
        g = lambda a, k=k: _bind(eqn, [a])[k]  # noqa: E731
        res.append((o, [u.rows(g) for u in terms[0]]))
    return res


@primitives.defrule("diagonal", "pad")
def _pad(eqn, vals, terms, outs):
    if terms[1] is not None:
        raise Unsupported("pad with an h-dependent padding value")
    cfg = eqn.params["padding_config"]
    g = lambda a: jax.lax.pad(a, _zero(a.dtype), cfg)  # noqa: E731
    return [(outs[0], [u.rows(g) for u in terms[0]])]


@primitives.defrule("diagonal", "concatenate")
def _concatenate_rule(eqn, vals, terms, outs):
    return [(outs[0], _concatenate(eqn, vals, terms))]


def _elementwise(eqn, vals, terms, outs):
    out = outs[0]
    if not jnp.issubdtype(jnp.asarray(out).dtype, jnp.inexact):
        return [(o, None) for o in outs]
    if len(outs) != 1:
        raise Unsupported(f"multi-output elementwise primitive {eqn.primitive.name}")
    shape = jnp.shape(out)
    new = []
    for j, t in enumerate(terms):
        if t is None or not jnp.issubdtype(jnp.asarray(vals[j]).dtype, jnp.inexact):
            continue

        def one(a, j=j):
            args = list(vals)
            args[j] = a
            return _bind1(eqn, args)

        x = jnp.asarray(vals[j])
        _, partial = jax.jvp(one, (x,), (jnp.ones_like(x),))
        if jnp.shape(x) != shape:
            if jnp.ndim(x) != 0:
                raise Unsupported(f"implicit broadcasting in {eqn.primitive.name}")
            g = lambda a: jnp.broadcast_to(a, shape)  # noqa: E731
            t = [u.rows(g) for u in t]
        new += [u.scale(partial) for u in t]
    if len(new) > MAX_TERMS:
        raise Unsupported("too many Jacobian terms")
    return [(out, new or None)]


def _custom_jvp(eqn, vals, terms):
    """A custom_jvp call on h: JAX differentiates it with its rule, so the primal must not be
    interpreted. When the rule's tangent map is elementwise in each h-dependent operand (each
    output element's tangent reads only the same element: relu, a straight-through round, a
    custom softclip), the call is an elementwise primitive whose partials one JVP (through the
    rule) with a tangent of ones gives; otherwise ``Unsupported``."""
    from autopar.passes.sparsity import custom_jvp_elementwise

    outs = _bind(eqn, vals)
    if len(outs) != 1 or not custom_jvp_elementwise(eqn, [t is not None for t in terms]):
        raise Unsupported(f"custom_jvp call {_compat.call_name(eqn)!r} whose rule is not elementwise")
    return _elementwise(eqn, vals, terms, outs)


def _concatenate(eqn, vals, terms):
    dim = eqn.params["dimension"]
    new = []
    for k, t in enumerate(terms):
        if t is None:
            continue

        # rows() vmaps g over C's trailing axis, so g only ever sees row-shaped arrays
        def g_rows(a, k=k):
            pieces = [a if j == k else jnp.zeros(jnp.shape(v), a.dtype) for j, v in enumerate(vals)]
            return jax.lax.concatenate(pieces, dim)

        new += [u.rows(g_rows) for u in t]
    if len(new) > MAX_TERMS:
        raise Unsupported("too many Jacobian terms")
    return new


def _linear(eqn, vals, j, terms, out):
    """Wrap each term in Lin(1, L, term), L the matrix of the map (h-dependent operand) -> out."""
    x = jnp.asarray(vals[j])

    def op(a):
        args = list(vals)
        args[j] = a
        return _bind1(eqn, args)

    m = int(np.prod(x.shape, dtype=np.int64))
    L = jax.jacfwd(op)(jnp.zeros(x.shape, x.dtype))  # out.shape + x.shape, h-independent
    L = L.reshape(tuple(jnp.shape(out)) + (m,))
    ones = jnp.ones(jnp.shape(out), L.dtype)
    new = []
    for t in terms:
        if t.depth + 1 > MAX_DEPTH:
            raise Unsupported("more than two h-dependent linear maps in a chain (O(D³) diagonal)")
        new.append(Lin(ones, L, _flatten(t)))
    return new


def _readout(terms, D, dtype):
    d = jnp.zeros((D,), dtype)
    ar = jnp.arange(D)
    for t in terms or []:
        s = t.s.reshape(-1)
        if s.shape[0] != D:
            raise Unsupported("output rows do not match the state")
        if isinstance(t, Sel):
            d = d + s * (t.idx.reshape(-1) == ar)
        elif isinstance(t.inner, Sel):
            C = t.C.reshape(D, -1)
            idx1 = t.inner.idx
            vals = C[idx1, jnp.arange(idx1.shape[0])] * t.inner.s
            d = d + s * jnp.zeros((D,), vals.dtype).at[idx1].add(vals)
        else:
            C1 = t.C.reshape(D, -1)
            mid = t.inner
            if not isinstance(mid.inner, Sel):
                raise Unsupported("chain too deep")
            C2, s2, idx2 = mid.C, mid.inner.s, mid.inner.idx
            K = C1[idx2, :] * C2.T  # (p, m): K[l, k] = C1[idx2_l, k] C2[k, l]
            w = jnp.matmul(K, mid.s, precision=jax.lax.Precision.HIGHEST)
            d = d + s * jnp.zeros((D,), w.dtype).at[idx2].add(s2 * w)
    return d.astype(dtype)


def jacobian_diagonal(f, v, x):
    """(f(v, x), diag ∂f/∂v) for one step by the interpreter; raises ``Unsupported``."""
    closed = jax.make_jaxpr(f)(v, x)
    D = v.shape[0]
    x_leaves = jax.tree_util.tree_leaves(x)
    args = [(v, [Sel(jnp.ones((D,), v.dtype), jnp.arange(D))])] + [(a, None) for a in x_leaves]
    outs = _eval_jaxpr(closed.jaxpr, closed.consts, args)
    val, terms = outs[0]
    return val, _readout(terms, D, v.dtype)


def interpreted_diagonal(f, points, xt):
    """``jacobian_diagonal`` at every time step; the jaxpr is traced once, outside the vmap."""
    p0 = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    x0 = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xt)
    closed = jax.make_jaxpr(f)(p0, x0)
    D = points.shape[1]

    def one(v, x):
        x_leaves = jax.tree_util.tree_leaves(x)
        args = [(v, [Sel(jnp.ones((D,), v.dtype), jnp.arange(D))])] + [(a, None) for a in x_leaves]
        (val, terms), *_ = _eval_jaxpr(closed.jaxpr, closed.consts, args)
        return val, _readout(terms, D, v.dtype)

    # Dry run on abstract values so Unsupported is raised at trace time, before the vmap.
    jax.eval_shape(one, p0, x0)
    return jax.vmap(one)(points, xt)
