r"""Matrix-valued states: one-sided (Kronecker) action and its inner factor, from the jaxpr.

A state leaf S of shape (*B, m, n) is updated linearly *from one side* when the
tangent map of the step is

    Ṡ ↦ M Ṡ   (left, acted axis m)     or     Ṡ ↦ Ṡ Mᵀ   (right, acted axis n),

independently per head b ∈ B. In the flat row-major vector this is
J = blkdiag_b(M_b ⊗ I_n) (left) or blkdiag_b(I_m ⊗ M_b) (right). The inner
factor M (q × q) is further classified as identity, scalar, diagonal,
diag(d) + U Vᵀ of rank r (Householder / DPLR: DeltaNet, DeltaProduct, RWKV-7, KDA)
or dense.

**How it is proven.** We interpret the jaxpr of the step's JVP with the tangent Ṡ
as a *symbolic* value and every other value (h, x, constants) concrete. A
symbolic value Y with axes tagged as batch ('b'), passive ('j': S's other
axis) or output ('a', 'o') is kept in the compact form

    Y[β, α, j] = d[β, α] Ṡ[β, α, j] + Σ_ℓ U[β, α, ℓ] (Σ_i V[β, ℓ, i] Ṡ[β, i, j])

(d only when α is the acted axis itself). The rules for mul, div, neg, add,
transpose, broadcast, reshape, reduce_sum, dot_general and calls keep this form;
every other primitive on the tangent, a contraction or reduction over the passive
axis j or over a batch axis, a multiplier that may vary along j, or a product of
two tangents, stops the analysis: no claim is made. Multipliers are proven
constant along j by a small provenance analysis of the h-independent values
(broadcasts, size-1 axes, elementwise ops). The h-independent slice of the jaxpr
computes d, U, V — exactly the compact factors the solver needs. The rank r is the
number of terms ℓ after merging (a contraction to k outputs collapses more than k
terms into k), so DeltaProduct with n_h Householder steps reports rank n_h.

At run time ``extract_factors`` interprets the linearised step (``jax.linearize``)
the same way, in *lenient* mode: a multiplier's value is read at j = 0. That is
exact because the pass has proven (strict mode, all inputs) that the map is the
same for every j, and because j is never mixed (checked again at run time).
"""

from __future__ import annotations

import dataclasses
import functools
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autopar import _compat, primitives

from .base import Pass

__all__ = ["NotKronecker", "Factors", "interpret", "extract_factors", "analyse_matrix_state", "MatrixStatePass"]

_HI = jax.lax.Precision.HIGHEST
ONE = "ONE"  # sentinel: d == 1 exactly


class NotKronecker(Exception):
    """The tangent map is not (provably) a one-sided action on the matrix leaf."""


@dataclasses.dataclass
class Cst:
    val: Any
    uni: frozenset  # axes along which ``val`` is proven constant (strict mode)


@dataclasses.dataclass
class Sym:
    shape: tuple
    roles: tuple  # per axis: "j", "a", "o" or "b<k>"
    d: Any  # None | ONE | array of rank ndim-1, broadcastable to the shape without j
    U: Any  # None | array of shape (shape without j) + (r,)
    V: Any  # None | array of shape B + (r, q)

    @property
    def jpos(self) -> int:
        return self.roles.index("j")

    @property
    def rank(self) -> int:
        return 0 if self.U is None else int(self.U.shape[-1])

    def sans_j(self, shape=None) -> tuple:
        shape = self.shape if shape is None else shape
        return tuple(s for i, s in enumerate(shape) if i != self.jpos)

    def roles_sans_j(self) -> tuple:
        return tuple(r for r in self.roles if r != "j")


@dataclasses.dataclass
class Flat:
    sym: Sym
    size: int


@dataclasses.dataclass
class Ctx:
    strict: bool
    q: int
    B: tuple
    dtype: Any
    #: the state leaf's own dtype (strict mode): casting the tangent below it rounds (not linear)
    leaf_dtype: Any = None


@dataclasses.dataclass(frozen=True)
class Factors:
    """Compact inner factor M = diag(d) + U Vᵀ per head (heads flattened to H)."""

    dkind: str  # "zero" | "identity" | "scalar" | "diagonal"
    d: Any  # (H, q) or None
    U: Any  # (H, q, r) or None
    V: Any  # (H, q, r) or None
    rank: int


def _fail(msg: str):
    raise NotKronecker(msg)


def _is_sym(v) -> bool:
    return isinstance(v, (Sym, Flat))


# ---- helpers on symbolic values ---------------------------------------------------------
def _d_array(d, rank: int, dtype):
    if d is ONE:
        return jnp.ones((1,) * rank, dtype)
    return d


def _compress(x, axes: Sequence[int]):
    """Keep index 0 along ``axes`` (values proven constant there), as size-1 axes."""
    for ax in axes:
        if x.shape[ax] > 1:
            x = jax.lax.slice_in_dim(x, 0, 1, axis=ax)
    return x


def _multiplier(ctx: Ctx, c: Cst, ndim: int, jpos: int):
    """A Cst operand of an elementwise op as an array of rank ndim-1 (j removed)."""
    val = jnp.asarray(c.val)
    if val.ndim == 0:
        return val.reshape((1,) * (ndim - 1)), True
    if val.ndim != ndim:
        _fail("elementwise operands of different rank")
    if val.shape[jpos] != 1:
        if ctx.strict and jpos not in c.uni:
            _fail("a multiplier of the state may vary along the passive axis (the map differs per column/row)")
        val = jax.lax.slice_in_dim(val, 0, 1, axis=jpos)
    if ctx.strict:
        val = _compress(val, [a for a in c.uni if a != jpos and a < val.ndim])
    return jnp.squeeze(val, axis=jpos), False


def _broadcast_sym(sym: Sym, out_shape: tuple) -> Sym:
    """Broadcast size-1 axes of ``sym`` to ``out_shape`` (allowed for 'o' axes only)."""
    if tuple(sym.shape) == tuple(out_shape):
        return sym
    for k, (s, o) in enumerate(zip(sym.shape, out_shape)):
        if s != o and (s != 1 or sym.roles[k] != "o"):
            _fail("broadcast of a state-dependent axis")
    if sym.d is not None:
        _fail("broadcast of a value carrying the diagonal part")
    U = None if sym.U is None else jnp.broadcast_to(sym.U, sym.sans_j(out_shape) + (sym.rank,))
    return Sym(tuple(out_shape), sym.roles, sym.d, U, sym.V)


def _canon_perm(sym: Sym) -> tuple[list[int], list[int]]:
    """Positions (in the j-less axes) of the batch axes, in order, and of the other axes."""
    rs = sym.roles_sans_j()
    b = sorted((i for i, r in enumerate(rs) if r.startswith("b")), key=lambda i: int(rs[i][1:]))
    o = [i for i, r in enumerate(rs) if not r.startswith("b")]
    if b != sorted(b):
        _fail("batch axes reordered")
    return b, o


def _d_to_U(ctx: Ctx, sym: Sym) -> Sym:
    """Rewrite the diagonal part d ⊙ Ṡ as q low-rank terms (U = I, V = diag(d))."""
    if sym.d is None:
        return sym
    rs = sym.roles_sans_j()
    if "a" not in rs:
        _fail("diagonal part without the acted axis")
    apos = rs.index("a")
    sj = sym.sans_j()
    q = ctx.q
    d = jnp.broadcast_to(_d_array(sym.d, len(sj), ctx.dtype), sj)
    b, o = _canon_perm(sym)
    if o != [apos]:
        _fail("diagonal part with extra axes")
    d_c = jnp.transpose(d, b + o)  # (B..., q)
    Vn = d_c[..., :, None] * jnp.broadcast_to(jnp.eye(q, dtype=d_c.dtype), d_c.shape + (q,))  # (B..., q(ℓ), q(i))
    eye_shape = [1] * len(sj) + [q]
    eye_shape[apos] = q
    Un = jnp.broadcast_to(jnp.eye(q, dtype=d_c.dtype).reshape(eye_shape), sj + (q,))
    U = Un if sym.U is None else jnp.concatenate([jnp.broadcast_to(sym.U, sj + (sym.rank,)), Un.astype(sym.U.dtype)], -1)
    V = Vn if sym.V is None else jnp.concatenate([sym.V, Vn.astype(sym.V.dtype)], -2)
    return Sym(sym.shape, sym.roles, None, U, V)


def _collapse(sym: Sym) -> Sym:
    """If the rank exceeds the number of output rows α, merge the terms into one per row."""
    if sym.U is None or sym.d is not None:
        return sym
    b, o = _canon_perm(sym)
    sj = sym.sans_j()
    P = int(np.prod([sj[i] for i in o], dtype=np.int64)) if o else 1
    if sym.rank <= P:
        return sym
    Uc = jnp.transpose(sym.U, b + o + [len(sj)])  # (B..., α..., ℓ)
    Bshape = tuple(sj[i] for i in b)
    Uc = jnp.broadcast_to(Uc, Bshape + tuple(sj[i] for i in o) + (sym.rank,)).reshape(Bshape + (P, sym.rank))
    Vn = jnp.einsum("...pl,...li->...pi", Uc, sym.V, precision=_HI)  # (B..., P, q)
    Un = jnp.eye(P, dtype=Vn.dtype).reshape((1,) * len(b) + tuple(sj[i] for i in o) + (P,))
    inv = np.argsort(b + o)
    Un = jnp.transpose(Un, list(inv) + [len(sj)])
    Un = jnp.broadcast_to(Un, sj + (P,))
    return Sym(sym.shape, sym.roles, None, Un, Vn)


def _neg(sym: Sym, dtype) -> Sym:
    d = None if sym.d is None else -_d_array(sym.d, len(sym.shape) - 1, dtype)
    return Sym(sym.shape, sym.roles, d, None if sym.U is None else -sym.U, sym.V)


def _add(ctx: Ctx, s1: Sym, s2: Sym, out_shape: tuple, sub: bool) -> Sym:
    if sub:
        s2 = _neg(s2, ctx.dtype)
    if len(s1.shape) != len(s2.shape):
        _fail("add of values of different rank")
    roles = []
    for r1, r2, a, b_ in zip(s1.roles, s2.roles, s1.shape, s2.shape):
        if r1 == r2:
            roles.append(r1)
        elif {r1, r2} == {"a", "o"} and a == b_:
            roles.append("a")
        elif r1 == "o" and a == 1:
            roles.append(r2)
        elif r2 == "o" and b_ == 1:
            roles.append(r1)
        else:
            _fail(f"add of differently oriented state values ({r1} vs {r2})")
    roles = tuple(roles)
    s1 = _broadcast_sym(dataclasses.replace(s1, roles=roles), out_shape)
    s2 = _broadcast_sym(dataclasses.replace(s2, roles=roles), out_shape)
    nd = len(out_shape) - 1
    if s1.d is None:
        d = s2.d
    elif s2.d is None:
        d = s1.d
    else:
        d = _d_array(s1.d, nd, ctx.dtype) + _d_array(s2.d, nd, ctx.dtype)
    if d is not None and "o" in roles:
        _fail("diagonal part mixed with other output axes")
    if s1.U is None:
        U, V = s2.U, s2.V
    elif s2.U is None:
        U, V = s1.U, s1.V
    else:
        U = jnp.concatenate([s1.U, s2.U.astype(s1.U.dtype)], -1)
        V = jnp.concatenate([s1.V, s2.V.astype(s1.V.dtype)], -2)
    return _collapse(Sym(tuple(out_shape), roles, d, U, V))


def _mul(ctx: Ctx, sym: Sym, c: Cst, out_shape: tuple, inverse: bool = False) -> Sym:
    sym = _broadcast_sym(sym, out_shape)
    g, _ = _multiplier(ctx, c, len(out_shape), sym.jpos)
    if inverse:
        g = 1.0 / g
    d = None if sym.d is None else (g if sym.d is ONE else sym.d * g)
    U = None if sym.U is None else sym.U * g[..., None]
    return Sym(tuple(out_shape), sym.roles, d, U, sym.V)


def _convert(sym: Sym, dtype) -> Sym:
    if not jnp.issubdtype(dtype, jnp.inexact):
        _fail("the state is converted to a non-float type")
    cast = lambda x: None if x is None else (x if x is ONE else x.astype(dtype))  # noqa: E731
    return Sym(sym.shape, sym.roles, cast(sym.d), cast(sym.U), cast(sym.V))


def _transpose(sym: Sym, perm: Sequence[int]) -> Sym:
    perm = list(perm)
    jpos = sym.jpos
    roles = tuple(sym.roles[p] for p in perm)
    bs = [r for r in roles if r.startswith("b")]
    if bs != sorted(bs, key=lambda r: int(r[1:])):
        _fail("batch axes reordered")
    ix = lambda p: p - (1 if p > jpos else 0)  # noqa: E731
    perm_sj = [ix(p) for p in perm if p != jpos]
    shape = tuple(sym.shape[p] for p in perm)
    d = sym.d
    if d is not None and d is not ONE:
        d = jnp.transpose(d, perm_sj)
    U = None if sym.U is None else jnp.transpose(sym.U, perm_sj + [len(perm_sj)])
    return Sym(shape, roles, d, U, sym.V)


def _broadcast_in_dim(sym: Sym, shape: tuple, bdims: Sequence[int]) -> Sym:
    shape = tuple(shape)
    roles = ["o"] * len(shape)
    for i, dpos in enumerate(bdims):
        roles[dpos] = sym.roles[i]
        if sym.shape[i] != shape[dpos] and sym.roles[i] != "o":
            _fail("broadcast of a state-dependent axis")
    if sym.d is not None and (len(shape) != len(sym.shape) or tuple(sym.shape) != tuple(shape[d] for d in bdims)):
        _fail("broadcast of a value carrying the diagonal part")
    out_j = bdims[sym.jpos]
    out = Sym(shape, tuple(roles), sym.d, None, sym.V)
    if sym.U is not None:
        mp = lambda p: p - (1 if p > out_j else 0)  # noqa: E731
        dims = [mp(bdims[i]) for i in range(len(sym.shape)) if i != sym.jpos]
        sj = out.sans_j()
        out.U = jax.lax.broadcast_in_dim(sym.U, sj + (sym.rank,), dims + [len(sj)])
    if sym.d is not None and sym.d is not ONE:
        mp = lambda p: p - (1 if p > out_j else 0)  # noqa: E731
        dims = [mp(bdims[i]) for i in range(len(sym.shape)) if i != sym.jpos]
        dd = jnp.broadcast_to(sym.d, sym.sans_j())
        out.d = jax.lax.broadcast_in_dim(dd, out.sans_j(), dims)
    return out


def _reshape(ctx: Ctx, v, out_shape: tuple):
    out_shape = tuple(out_shape)
    if isinstance(v, Flat):
        if out_shape == tuple(v.sym.shape):
            return v.sym
        if out_shape == (v.size,):
            return v
        _fail("reshape of the flat state into another shape")
    sym = v
    in_shape = tuple(sym.shape)
    in_non1 = [i for i, s in enumerate(in_shape) if s != 1]
    out_non1 = [i for i, s in enumerate(out_shape) if s != 1]
    if [in_shape[i] for i in in_non1] == [out_shape[i] for i in out_non1]:
        for i, s in enumerate(in_shape):
            if s == 1 and sym.roles[i] != "o":
                _fail("reshape dropping a state axis of size 1")
        roles = ["o"] * len(out_shape)
        for i, o in zip(in_non1, out_non1):
            roles[o] = sym.roles[i]
        out = Sym(out_shape, tuple(roles), None, None, sym.V)
        sj = out.sans_j()
        if sym.d is not None:
            out.d = ONE if sym.d is ONE else jnp.broadcast_to(sym.d, sym.sans_j()).reshape(sj)
        if sym.U is not None:
            out.U = jnp.broadcast_to(sym.U, sym.sans_j() + (sym.rank,)).reshape(sj + (sym.rank,))
        return out
    if len(out_shape) == 1 and int(np.prod(in_shape)) == out_shape[0]:
        return Flat(sym, out_shape[0])
    _fail("reshape that splits or merges state axes")


def _reduce_sum(ctx: Ctx, sym: Sym, axes: Sequence[int]) -> Sym:
    axes = sorted(axes)
    for a in axes:
        if sym.roles[a] not in ("a", "o"):
            _fail(f"sum over the {'passive' if sym.roles[a] == 'j' else 'batch'} axis of the state")
    if any(sym.roles[a] == "a" for a in axes):
        sym = _d_to_U(ctx, sym)
    if sym.d is not None:
        _fail("sum of a value carrying the diagonal part")
    jpos = sym.jpos
    ix = lambda p: p - (1 if p > jpos else 0)  # noqa: E731
    keep = [i for i in range(len(sym.shape)) if i not in axes]
    out = Sym(tuple(sym.shape[i] for i in keep), tuple(sym.roles[i] for i in keep), None, None, sym.V)
    if sym.U is not None:
        out.U = jnp.sum(jnp.broadcast_to(sym.U, sym.sans_j() + (sym.rank,)), axis=tuple(ix(a) for a in axes))
    return _collapse(out)


def _dot_general(ctx: Ctx, eqn, ins) -> Sym:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    sym_left = _is_sym(ins[0])
    if _is_sym(ins[0]) and _is_sym(ins[1]):
        _fail("product of two state-dependent values (not linear)")
    s, c = (ins[0], ins[1]) if sym_left else (ins[1], ins[0])
    if isinstance(s, Flat):
        _fail("contraction of the flat state vector")
    sc, cc = (lc, rc) if sym_left else (rc, lc)
    sb, cb = (lb, rb) if sym_left else (rb, lb)
    for a in sc:
        if s.roles[a] not in ("a", "o"):
            _fail(f"contraction over the {'passive' if s.roles[a] == 'j' else 'batch'} axis of the state")
    for a in sb:
        if s.roles[a] == "j":
            _fail("batching over the passive axis of the state")
    if s.d is not None:
        s = _d_to_U(ctx, s)
    cval = jnp.asarray(c.val)
    letters = iter(string.ascii_letters)
    s_let = [next(letters) for _ in s.shape]
    c_let = [None] * cval.ndim
    for a, b_ in zip(sc, cc):
        c_let[b_] = s_let[a]
    for a, b_ in zip(sb, cb):
        c_let[b_] = s_let[a]
    c_let = [x if x is not None else next(letters) for x in c_let]
    ell = next(letters)
    s_free = [i for i in range(len(s.shape)) if i not in sc and i not in sb]
    c_free = [i for i in range(cval.ndim) if i not in cc and i not in cb]
    # output axes: batch, lhs free, rhs free
    out_axes = [("s", i) for i in sb]
    out_axes += [("s", i) for i in s_free] if sym_left else [("c", i) for i in c_free]
    out_axes += [("c", i) for i in c_free] if sym_left else [("s", i) for i in s_free]
    roles, out_let = [], []
    for who, i in out_axes:
        roles.append(s.roles[i] if who == "s" else "o")
        out_let.append(s_let[i] if who == "s" else c_let[i])
    shape = tuple(eqn.outvars[0].aval.shape)
    out = Sym(shape, tuple(roles), None, None, s.V)
    if s.U is not None:
        jl = s_let[s.jpos]
        u_let = "".join(x for x in s_let if x != jl) + ell
        o_let = "".join(x for x in out_let if x != jl) + ell
        U = jnp.broadcast_to(s.U, s.sans_j() + (s.rank,))
        out.U = jnp.einsum(f"{u_let},{''.join(c_let)}->{o_let}", U, cval, precision=_HI)
        pet = eqn.params.get("preferred_element_type")
        if pet is not None:
            out.U = out.U.astype(pet)
    return _collapse(out)


# ---- provenance of h-independent values (strict mode) ----------------------------------
def _uniform_axes(eqn, ins: Sequence[Cst]) -> list[frozenset]:
    outs = []
    name = eqn.primitive.name
    t = primitives.row(name)
    for ov in eqn.outvars:
        shape = tuple(getattr(ov.aval, "shape", ()))
        size1 = frozenset(i for i, s in enumerate(shape) if s == 1)
        uni = size1
        if t is not None and t.elementwise:
            acc = frozenset(range(len(shape)))
            for a, c in zip(eqn.invars, ins):
                ashape = tuple(getattr(a.aval, "shape", ()))
                if len(ashape) == 0:
                    continue
                acc &= c.uni | frozenset(i for i, s in enumerate(ashape) if s == 1)
            uni = acc | size1
        elif name == "broadcast_in_dim":
            bd = eqn.params["broadcast_dimensions"]
            ishape = tuple(eqn.invars[0].aval.shape)
            u = set(i for i in range(len(shape)) if i not in bd)
            for i, dpos in enumerate(bd):
                if ishape[i] == 1 or i in ins[0].uni:
                    u.add(dpos)
            uni = frozenset(u) | size1
        elif name == "transpose":
            perm = eqn.params["permutation"]
            uni = frozenset(k for k, p in enumerate(perm) if p in ins[0].uni) | size1
        elif name in ("reshape", "squeeze", "expand_dims"):
            ishape = tuple(eqn.invars[0].aval.shape)
            in_non1 = [i for i, s in enumerate(ishape) if s != 1]
            out_non1 = [i for i, s in enumerate(shape) if s != 1]
            if [ishape[i] for i in in_non1] == [shape[i] for i in out_non1]:
                uni = frozenset(o for i, o in zip(in_non1, out_non1) if i in ins[0].uni) | size1
        elif name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod"):
            axes = set(eqn.params["axes"])
            keep = [i for i in range(len(eqn.invars[0].aval.shape)) if i not in axes]
            uni = frozenset(k for k, i in enumerate(keep) if i in ins[0].uni) | size1
        outs.append(uni)
    return outs


# ---- the interpreter -------------------------------------------------------------------
class _MatrixState(_compat.Interpreter):
    """Values: ``Cst`` (h-independent), ``Sym`` / ``Flat`` (the tangent); calls on the tangent are walked."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def literal(self, atom):
        val = _compat.literal_value(atom)
        return Cst(val, frozenset(range(np.ndim(val))))

    def const(self, var, c):
        return c if isinstance(c, (Cst, Sym, Flat)) else Cst(c, frozenset(i for i, s in enumerate(np.shape(c)) if s == 1))

    def enters(self, eqn, ins):
        return any(_is_sym(v) for v in ins)

    def equation(self, eqn, ins):
        return _apply(self.ctx, eqn, ins)


def interpret(ctx: Ctx, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """Run ``jaxpr`` with ``args`` (Sym/Flat for the tangent, Cst otherwise)."""
    it = _MatrixState(ctx)
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    return _compat.evaluate(jp, list(args), it, consts=[it.const(v, c) for v, c in zip(jp.constvars, consts)])


def _apply(ctx: Ctx, eqn, ins) -> list[Any]:
    name = eqn.primitive.name
    if not any(_is_sym(v) for v in ins):
        vals = _compat.bind_eqn(eqn, [c.val for c in ins])
        unis = _uniform_axes(eqn, ins) if ctx.strict else [frozenset()] * len(vals)
        return [Cst(v, u) for v, u in zip(vals, unis)]
    flat = any(isinstance(v, Flat) for v in ins[:2])
    t = primitives.row(name)
    # slots of the trait table: "matrix_state" on Sym operands, "matrix_state_flat" on the flat vector
    rule = None if t is None else t.rules.get("matrix_state_flat" if flat else "matrix_state")
    if rule is None:
        _fail(f"primitive {name!r} on the flat state vector" if flat else f"primitive {name!r} applied to the state")
    out_shape = tuple(eqn.outvars[0].aval.shape) if eqn.outvars else ()
    return rule(ctx, eqn, ins, out_shape)


# ---- the ``matrix_state`` slots: rule(ctx, eqn, ins, out_shape) on Sym / Cst operands ---------
@primitives.defrule("matrix_state", "add", "add_any", "sub")
def _add_rule(ctx, eqn, ins, out_shape):
    a, b = ins
    sub = eqn.primitive.name == "sub"
    if not _is_sym(a) or not _is_sym(b):
        s = _broadcast_sym(a if _is_sym(a) else b, out_shape)
        return [_neg(s, ctx.dtype) if (sub and not _is_sym(a)) else s]
    return [_add(ctx, a, b, out_shape, sub=sub)]


@primitives.defrule("matrix_state", "mul")
def _mul_rule(ctx, eqn, ins, out_shape):
    a, b = ins
    if _is_sym(a) and _is_sym(b):
        _fail("product of two state-dependent values (not linear)")
    s, c = (a, b) if _is_sym(a) else (b, a)
    return [_mul(ctx, s, c, out_shape)]


@primitives.defrule("matrix_state", "div")
def _div_rule(ctx, eqn, ins, out_shape):
    a, b = ins
    if _is_sym(b):
        _fail("division by a state-dependent value (not linear)")
    return [_mul(ctx, a, b, out_shape, inverse=True)]


@primitives.defrule("matrix_state", "neg")
def _neg_rule(ctx, eqn, ins, out_shape):
    return [_neg(ins[0], ctx.dtype)]


@primitives.defrule("matrix_state", "convert_element_type", "copy", "copy_p")
def _convert_rule(ctx, eqn, ins, out_shape):
    _check_rounding(ctx, eqn)
    return [_convert(ins[0], eqn.outvars[0].aval.dtype)]


@primitives.defrule("matrix_state", "transpose")
def _transpose_rule(ctx, eqn, ins, out_shape):
    return [_transpose(ins[0], eqn.params["permutation"])]


@primitives.defrule("matrix_state", "broadcast_in_dim")
def _broadcast_rule(ctx, eqn, ins, out_shape):
    if len(ins) > 1:
        _fail("dynamic broadcast of the state")
    return [_broadcast_in_dim(ins[0], eqn.params["shape"], eqn.params["broadcast_dimensions"])]


@primitives.defrule("matrix_state", "reshape", "squeeze", "expand_dims")
@primitives.defrule("matrix_state_flat", "reshape", "squeeze", "expand_dims")
def _reshape_rule(ctx, eqn, ins, out_shape):
    return [_reshape(ctx, ins[0], out_shape)]


@primitives.defrule("matrix_state", "reduce_sum")
def _reduce_sum_rule(ctx, eqn, ins, out_shape):
    return [_reduce_sum(ctx, ins[0], eqn.params["axes"])]


@primitives.defrule("matrix_state", "dot_general")
def _dot_general_rule(ctx, eqn, ins, out_shape):
    _check_rounding(ctx, eqn)
    return [_dot_general(ctx, eqn, ins)]


# ---- the ``matrix_state_flat`` slots: the layout's moves of the flat state vector -------------
@primitives.defrule("matrix_state_flat", "add", "add_any", "sub")
def _flat_arith(ctx, eqn, ins, out_shape):
    _fail("arithmetic on the flat state vector")


@primitives.defrule("matrix_state_flat", "slice")
def _flat_slice(ctx, eqn, ins, out_shape):
    x = ins[0]
    if tuple(eqn.params["start_indices"]) == (0,) and tuple(eqn.params["limit_indices"]) == (x.size,):
        return [x]
    _fail("primitive 'slice' on the flat state vector")


@primitives.defrule("matrix_state_flat", "concatenate")
def _flat_concatenate(ctx, eqn, ins, out_shape):
    if len(ins) == 1:
        return [ins[0]]
    _fail("primitive 'concatenate' on the flat state vector")


@primitives.defrule("matrix_state_flat", "convert_element_type", "copy", "copy_p")
def _flat_convert(ctx, eqn, ins, out_shape):
    _check_rounding(ctx, eqn)
    x = ins[0]
    return [Flat(_convert(x.sym, eqn.outvars[0].aval.dtype), x.size)]


def _check_rounding(ctx: Ctx, eqn) -> None:
    """A cast of the tangent below the state leaf's own precision rounds it: the tangent map is
    then not linear (see ``passes.precision``); casts back to the leaf's dtype are the layout's."""
    from .precision import narrower, rounds

    if not ctx.strict or not rounds(eqn):
        return
    dst = eqn.outvars[0].aval.dtype
    if ctx.leaf_dtype is None or narrower(ctx.leaf_dtype, dst):
        _fail(f"{eqn.primitive.name} rounds the state to {np.dtype(dst).name} (below the state's precision)")


# ---- entry points ----------------------------------------------------------------------
def _geometry(leaf_shape: tuple, side: str):
    """(B, q, p, acted axis, passive axis) for a leaf (*B, m, n)."""
    nb = len(leaf_shape) - 2
    B = tuple(leaf_shape[:nb])
    m, n = leaf_shape[nb:]
    if side == "right":
        return B, n, m, nb + 1, nb
    return B, m, n, nb, nb + 1


def _seed(leaf_shape: tuple, side: str, D: int) -> Flat:
    B, q, p, apos, jpos = _geometry(leaf_shape, side)
    roles = [f"b{k}" for k in range(len(B))] + ["", ""]
    roles[apos], roles[jpos] = "a", "j"
    return Flat(Sym(tuple(leaf_shape), tuple(roles), ONE, None, None), D)


def _finish(ctx: Ctx, out, leaf_shape: tuple, side: str) -> Factors:
    B, q, p, apos, jpos = _geometry(leaf_shape, side)
    H = int(np.prod(B, dtype=np.int64)) if B else 1
    if isinstance(out, Cst):
        return Factors("zero", None, None, None, 0)
    if isinstance(out, Flat):
        out = out.sym
    if tuple(out.shape) != tuple(leaf_shape):
        _fail("the state update does not return the state's shape from the tangent")
    want = [f"b{k}" for k in range(len(B))] + ["", ""]
    want[jpos] = "j"
    for k, (r, w) in enumerate(zip(out.roles, want)):
        if k == apos:
            if r not in ("a", "o"):
                _fail("the acted axis moved")
        elif r != w:
            _fail("the state's axes are permuted by the update")
    if out.d is not None and out.roles[apos] != "a":
        _fail("diagonal part on a permuted axis")
    sj = out.sans_j()
    d = None
    dkind = "zero"
    if out.d is ONE:
        dkind = "identity"
    elif out.d is not None:
        dd = out.d
        dkind = "scalar" if dd.shape[-1] == 1 else "diagonal"
        d = jnp.broadcast_to(dd, sj).reshape(H, q)
    U = V = None
    if out.U is not None:
        U = jnp.broadcast_to(out.U, sj + (out.rank,)).reshape(H, q, out.rank)
        V = jnp.swapaxes(jnp.broadcast_to(out.V, B + out.V.shape[-2:]).reshape(H, out.rank, q), -1, -2)
    return Factors(dkind, d, U, V, out.rank)


def extract_factors(jvp, D: int, leaf_shape: tuple, side: str, dtype) -> Factors:
    """Run time: compact inner factors of a linearised step ``jvp`` (flat tangent -> flat)."""
    closed = jax.make_jaxpr(jvp)(jnp.zeros((D,), dtype))
    B, q, p, _, _ = _geometry(leaf_shape, side)
    ctx = Ctx(strict=False, q=q, B=B, dtype=dtype)
    (out,) = interpret(ctx, closed.jaxpr, closed.consts, [_seed(leaf_shape, side, D)])
    return _finish(ctx, out, leaf_shape, side)


def _read_factors(jvp, dtype, *, D: int, leaf_shape: tuple, side: str) -> Factors:
    """The reader a Kronecker structure calls at run time (``Kronecker.reader``)."""
    return extract_factors(jvp, D, leaf_shape, side, dtype)


def analyse_matrix_state(rec, side: str):
    """Strict proof on the JVP of the step, then the run-time extraction traced abstractly.

    Returns (Factors-with-abstract-arrays, rank) or raises NotKronecker.
    """
    leaf = rec.layout.diff_leaves[0]
    shape, D = tuple(leaf.shape), rec.size
    B, q, p, _, _ = _geometry(shape, side)
    dtype = rec.layout.vec_dtype
    jp = rec.step_jaxpr
    n_disc = rec.n_discrete
    v_aval = jax.ShapeDtypeStruct((D,), dtype)
    in_avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jp.jaxpr.invars]
    const_avals = [jax.ShapeDtypeStruct(np.shape(c), jnp.asarray(c).dtype) for c in rec.consts]

    def step(consts, v, rest):
        # custom_vjp calls differentiate as their primal here (jax.jvp cannot enter them).
        return _compat.eval_jaxpr_inlined(jp.jaxpr, list(consts), v, *rest)[0]

    def tangent_map(consts, v, rest, t):
        return jax.jvp(lambda v_: step(consts, v_, rest), (v,), (t,))[1]

    closed = jax.make_jaxpr(tangent_map)(const_avals, v_aval, in_avals[1:], v_aval)
    n_c = len(const_avals)
    ctx = Ctx(strict=True, q=q, B=B, dtype=dtype, leaf_dtype=leaf.dtype)

    def strict(*flat_args):
        args = [Cst(a, frozenset(i for i, s in enumerate(np.shape(a)) if s == 1)) for a in flat_args]
        (out,) = interpret(ctx, closed.jaxpr, closed.consts, args + [_seed(shape, side, D)])
        return _finish(ctx, out, shape, side)

    holder = {}

    def run_strict(*flat_args):
        holder["f"] = strict(*flat_args)
        return 0

    jax.eval_shape(run_strict, *const_avals, v_aval, *in_avals[1:])
    proof = holder["f"]

    def runtime(consts, v, rest):
        _, jvp = jax.linearize(lambda v_: step(consts, v_, rest), v)
        f = extract_factors(jvp, D, shape, side, dtype)
        holder["r"] = f
        return 0

    jax.eval_shape(runtime, const_avals, v_aval, in_avals[1:])
    rt = holder["r"]
    if rt.rank != proof.rank:
        _fail(f"run-time extraction found rank {rt.rank}, the proof rank {proof.rank}")
    del n_c, n_disc, p
    return proof


class MatrixStatePass(Pass):
    """Refines ``structure`` to ``kronecker(<inner>)`` for a matrix state acted on from one side.

    Provides ``matrix_state``: a dict with ``side``, ``p``, ``q``, ``heads``, ``inner``,
    ``rank`` when recognised, else ``{"recognised": False, "reason": ...}``.
    """

    name = "matrix_state"
    requires = ("structure", "linear")
    provides = ("matrix_state",)
    refines = ("structure",)

    def run(self, rec, facts):
        from autopar.structure import Scalar
        from autopar.structure_matrix import kronecker_from_factors

        leaves = rec.layout.diff_leaves
        if len(leaves) != 1 or len(leaves[0].shape) < 2 or rec.layout.mixed_complex:
            return {"matrix_state": {"recognised": False, "reason": "needs exactly one float state leaf with ndim >= 2"}}
        if np.issubdtype(np.dtype(rec.layout.vec_dtype), np.complexfloating):
            return {"matrix_state": {"recognised": False, "reason": "complex states are not handled"}}
        shape = tuple(leaves[0].shape)
        if min(shape[-2:]) < 2:
            return {"matrix_state": {"recognised": False, "reason": "a matrix axis of size 1"}}
        found, reasons = [], {}
        for side in ("right", "left"):
            try:
                f = analyse_matrix_state(rec, side)
            except NotKronecker as e:
                reasons[side] = str(e)
                continue
            found.append((side, f))
        if not found:
            return {"matrix_state": {"recognised": False, "reason": "; ".join(f"{k}: {v}" for k, v in reasons.items())}}
        order = {"zero": 0, "identity": 1, "scalar": 2, "diagonal": 3}
        side, f = min(found, key=lambda sf: (sf[1].rank, order[sf[1].dkind], sf[0] != "left"))
        reader = functools.partial(_read_factors, D=rec.size, leaf_shape=shape, side=side)
        kron = kronecker_from_factors(rec.size, shape, side, f, reader=reader)
        info = {"recognised": True, "side": side, "p": kron.p, "q": kron.q, "heads": kron.heads,
                "inner": kron.inner_kind, "rank": kron.rank, "dkind": f.dkind, "kind": kron.kind}
        current = facts.get("structure")
        out = {"matrix_state": info}
        if f.dkind == "zero" and f.rank == 0:
            return out
        # keep what holds over the whole state (zero / identity / scalar); replace pattern kinds
        if current is None or current.order > Scalar.order:
            out["structure"] = kron
        return out
