r"""Identity and scalar Jacobians, proven from the jaxpr by a coefficient lattice.

Each value is abstracted, element by element, as one of

* ``Const(tok)`` — independent of h; ``tok`` names a scalar when *every* element is
  provably the same scalar (a literal, a size-1 value, a broadcast of one, or a
  known constant with equal entries), else None;
* ``Lin(src, tok)`` — element e equals ``c · h[src[e]] + b_e`` (``src[e] = -1``: independent
  of h) where ``c`` is the *same* h-independent scalar for every element: ``tok = "one"``
  (c = 1) or a token naming it (tokens are built structurally, so equal tokens denote equal
  values within one step);
* ``TOP`` — anything else.

Sums of ``Lin`` values with the same ``src`` add their coefficients, products with a
uniform ``Const`` scale them, shape ops / gathers with known indices move ``src`` around,
selects with an h-independent predicate keep a ``Lin`` only when every case has the same
``src`` and coefficient. If the new state is ``Lin(arange(D), "one")`` then J = I for every
h and x (identity); with another token J = a·I (scalar). Anything unproven is TOP and the
structure falls back to the sparsity pattern, so the proof is sound by construction.

A ``Lin`` is a claim about *values*, so an equation that rounds an h-dependent value to a
lower precision (``precision.rounds``) gives TOP, and so does a custom_jvp call on h (JAX
differentiates its rule, which need not match the primal).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from autopar import _compat, primitives

from autopar.dtypes import is_complex, is_inexact
from .base import Pass
from .constfold import fold
from .indexing import dynamic_slice_starts, gather_positions, scatter_positions
from .interpret import Domain, control_flow, is_control_flow, propagate
from .precision import Rounding, rounding_for

__all__ = ["Const", "Lin", "TOP", "CoefficientDomain", "CoefficientPass", "coefficient_kind"]

_fresh = itertools.count()


class Const:
    __slots__ = ("tok",)

    def __init__(self, tok=None):
        self.tok = tok

    def __eq__(self, other):
        return isinstance(other, Const) and self.tok == other.tok

    def __repr__(self):
        return f"Const({self.tok!r})"


class Lin:
    __slots__ = ("src", "tok")

    def __init__(self, src, tok):
        self.src = np.asarray(src, np.int64)
        self.tok = tok

    def __eq__(self, other):
        return isinstance(other, Lin) and self.tok == other.tok and self.src.shape == other.src.shape and np.array_equal(self.src, other.src)

    def __repr__(self):
        return f"Lin({self.src.tolist()!r}, {self.tok!r})"


class _Top:
    def __repr__(self):
        return "TOP"


TOP = _Top()


def _keeps_uniform(t) -> bool:
    """Every output element is one of operand 0's elements, so a uniform constant keeps its token:
    copies (``selects``) and max / min reductions."""
    return t is not None and (t.selects or (t.degree == "piecewise" and t.dataflow in ("reduction", "cumulative")))


def _size(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64))


def _new_tok():
    return ("fresh", next(_fresh))


def _src_of(v, shape):
    if isinstance(v, Lin):
        return np.broadcast_to(v.src, shape)
    return np.full(shape, -1, np.int64)


class CoefficientDomain(Domain):
    name = "coefficients"
    const_fast_path = False

    def __init__(self, rounding: Rounding | None = None) -> None:
        super().__init__()
        #: which equations count as rounding (``precision.rounding_for``).
        self.rounds = rounding or Rounding()

    def const(self, aval):
        return Const(_new_tok() if _size(aval) == 1 else None)

    def is_const(self, value):
        return isinstance(value, Const)

    def join(self, a, b):
        if isinstance(a, Const) and isinstance(b, Const):
            return a if a.tok == b.tok else Const(None)
        if isinstance(a, Lin) and a == b:
            return a
        return TOP

    def equal(self, a, b):
        return a is b or a == b

    def widen(self, value, aval, ins):
        return TOP

    def unstack(self, value, aval):
        return value if isinstance(value, Const) else TOP

    def stack(self, value, aval):
        return value if isinstance(value, Const) else TOP

    def guard(self, selector, outs):
        return [TOP for _ in outs]

    def default(self, eqn, ins):
        return [TOP for _ in eqn.outvars]

    # ---- dispatch -------------------------------------------------------------------
    def enters(self, eqn, ins):
        """Calls are walked (a custom_jvp call on h is TOP: JAX differentiates its rule)."""
        return not all(isinstance(v, Const) for v in ins) and not _compat.is_custom_jvp(eqn)

    def apply(self, eqn, ins):
        known = list(self.known_in)
        ins = [self._upgrade(v, k) for v, k in zip(ins, known)]
        name = eqn.primitive.name
        if all(isinstance(v, Const) for v in ins):
            return self._const_out(eqn, ins, known)
        if is_control_flow(eqn):
            self.known_in = known
            return control_flow(self, eqn, ins)
        if _compat.is_custom_jvp(eqn) or self.rounds(eqn):
            return [TOP for _ in eqn.outvars]
        if any(v is TOP for v in ins):
            return [TOP for _ in eqn.outvars]
        rule = self.rules.get(name)
        if rule is None:
            return [TOP for _ in eqn.outvars]
        out = rule(eqn, ins, known)
        return out if isinstance(out, list) else [out]

    def _upgrade(self, v, k):
        if k is not None and isinstance(v, Const):
            if k.size == 1:
                return Const(("val", k.dtype.str, k.reshape(-1)[0].item()))
            if k.size and np.all(k == k.reshape(-1)[0]):
                return Const(("val", k.dtype.str, k.reshape(-1)[0].item()))
        return v

    def _const_out(self, eqn, ins, known):
        name = eqn.primitive.name
        t = primitives.row(name)
        vals = fold(eqn, known) if all(k is not None for k in known) else None
        outs = []
        for i, var in enumerate(eqn.outvars):
            tok = None
            if vals is not None:
                tok = self._upgrade(Const(None), vals[i]).tok
            if tok is None and _size(var.aval) == 1:
                tok = _new_tok()
            if tok is None and ins and ins[0].tok is not None and _keeps_uniform(t):
                tok = ins[0].tok
            if tok is None and name == "concatenate" and len({v.tok for v in ins}) == 1:
                tok = ins[0].tok
            if tok is None and name == "select_n" and len({v.tok for v in ins[1:]}) == 1:
                tok = ins[1].tok
            if tok is None and t is not None and t.elementwise and all(v.tok is not None for v in ins):
                tok = _new_tok()
            outs.append(Const(tok))
        return outs


# ---- rules on Lin values (no TOP operand; at least one Lin) --------------------------------
def _shape(eqn, i=0):
    return tuple(eqn.outvars[i].aval.shape)


def _addsub(eqn, ins, known):
    a, b = ins
    shape = _shape(eqn)
    sub = eqn.primitive.name == "sub"
    if isinstance(a, Lin) and isinstance(b, Lin):
        sa, sb = np.broadcast_to(a.src, shape), np.broadcast_to(b.src, shape)
        if not np.array_equal(sa, sb):
            return TOP
        return Lin(sa, ("sub" if sub else "add", a.tok, b.tok))
    if isinstance(a, Lin):
        return Lin(np.broadcast_to(a.src, shape), a.tok)
    return Lin(np.broadcast_to(b.src, shape), ("neg", b.tok) if sub else b.tok)


def _neg(eqn, ins, known):
    return Lin(ins[0].src, ("neg", ins[0].tok))


def _mul(eqn, ins, known):
    a, b = ins
    if isinstance(a, Lin) and isinstance(b, Lin):
        return TOP
    lin, c = (a, b) if isinstance(a, Lin) else (b, a)
    if c.tok is None:
        return TOP
    tok = c.tok if lin.tok == "one" else ("mul", lin.tok, c.tok)
    return Lin(np.broadcast_to(lin.src, _shape(eqn)), tok)


def _div(eqn, ins, known):
    a, b = ins
    if not isinstance(a, Lin) or not isinstance(b, Const) or b.tok is None:
        return TOP
    return Lin(np.broadcast_to(a.src, _shape(eqn)), ("div", a.tok, b.tok))


def _same(eqn, ins, known):
    return Lin(ins[0].src, ins[0].tok)


def _convert(eqn, ins, known):
    a_in, a_out = eqn.invars[0].aval, eqn.outvars[0].aval
    if is_inexact(a_in.dtype) and is_inexact(a_out.dtype):
        if is_complex(a_in.dtype) and not is_complex(a_out.dtype):
            return TOP
        return Lin(ins[0].src, ins[0].tok)
    return TOP


def _integer_pow(eqn, ins, known):
    return Lin(ins[0].src, ins[0].tok) if eqn.params["y"] == 1 else TOP


def _broadcast_in_dim(eqn, ins, known):
    src = ins[0].src
    shape = tuple(eqn.params["shape"])
    expanded = [1] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        expanded[d] = src.shape[i]
    return Lin(np.broadcast_to(src.reshape(expanded), shape), ins[0].tok)


def _reshape(eqn, ins, known):
    return Lin(ins[0].src.reshape(_shape(eqn)), ins[0].tok)


def _transpose(eqn, ins, known):
    return Lin(np.transpose(ins[0].src, tuple(eqn.params["permutation"])), ins[0].tok)


def _slice(eqn, ins, known):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    return Lin(ins[0].src[tuple(slice(s, l, st) for s, l, st in zip(p["start_indices"], p["limit_indices"], strides))], ins[0].tok)


def _rev(eqn, ins, known):
    return Lin(np.flip(ins[0].src, tuple(eqn.params["dimensions"])), ins[0].tok)


def _one_tok(vals):
    toks = {v.tok for v in vals if isinstance(v, Lin)}
    return toks.pop() if len(toks) == 1 else None


def _concatenate(eqn, ins, known):
    tok = _one_tok(ins)
    if tok is None:
        return TOP
    parts = [_src_of(v, tuple(a.aval.shape)) for v, a in zip(ins, eqn.invars)]
    return Lin(np.concatenate(parts, axis=eqn.params["dimension"]), tok)


def _pad(eqn, ins, known):
    x, pv = ins
    cfg = eqn.params["padding_config"]
    if not isinstance(x, Lin) or isinstance(pv, Lin) or any(lo < 0 or hi < 0 for lo, hi, _ in cfg):
        return TOP
    out = np.full(_shape(eqn), -1, np.int64)
    idx = tuple(slice(lo, lo + (n - 1) * (it + 1) + 1 if n else lo, it + 1) for (lo, hi, it), n in zip(cfg, x.src.shape))
    out[idx] = x.src
    return Lin(out, x.tok)


def _select_n(eqn, ins, known):
    pred, cases = ins[0], ins[1:]
    if not isinstance(pred, Const):
        return TOP
    tok = _one_tok(cases)
    if tok is None:
        return TOP
    shape = _shape(eqn)
    if known[0] is not None:
        sel = np.broadcast_to(np.asarray(known[0]).astype(np.int64), shape)
        srcs = [_src_of(c, shape) for c in cases]
        return Lin(np.choose(sel, srcs), tok)
    if all(isinstance(c, Lin) for c in cases):
        s0 = np.broadcast_to(cases[0].src, shape)
        if all(np.array_equal(np.broadcast_to(c.src, shape), s0) for c in cases[1:]):
            return Lin(s0, tok)
    return TOP


def _gather(eqn, ins, known):
    x = ins[0]
    if not isinstance(x, Lin) or known[1] is None:
        return TOP
    p = eqn.params
    pos = gather_positions(eqn.invars[0].aval.shape, known[1], p["dimension_numbers"], p["slice_sizes"], p["mode"], _shape(eqn))
    if pos is None:
        return TOP
    flat = x.src.reshape(-1)
    return Lin(np.where(pos >= 0, flat[np.maximum(pos, 0)], -1), x.tok)


def _dynamic_slice(eqn, ins, known):
    x = ins[0]
    sizes = tuple(eqn.params["slice_sizes"])
    starts = dynamic_slice_starts(eqn.invars[0].aval.shape, sizes, known[1:])
    if not isinstance(x, Lin) or any(s is None for s in starts):
        return TOP
    return Lin(x.src[tuple(slice(s, s + n) for s, n in zip(starts, sizes))], x.tok)


def _dynamic_update_slice(eqn, ins, known):
    x, u = ins[0], ins[1]
    shape, ushape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    starts = dynamic_slice_starts(shape, ushape, known[2:])
    tok = _one_tok([x, u])
    if tok is None or any(s is None for s in starts):
        return TOP
    out = np.array(_src_of(x, tuple(shape)))
    out[tuple(slice(s, s + n) for s, n in zip(starts, ushape))] = _src_of(u, tuple(ushape))
    return Lin(out, tok)


def _scatter(eqn, ins, known):
    x, _, u = ins[:3]
    name = eqn.primitive.name
    if known[1] is None or isinstance(ins[1], Lin):
        return TOP
    if name != "scatter" and isinstance(u, Lin):
        return TOP  # coefficients would add up per position
    shape = tuple(eqn.invars[0].aval.shape)
    p = eqn.params
    if name != "scatter":
        if name not in ("scatter-add", "scatter_add", "scatter-sub", "scatter_sub") or not isinstance(x, Lin):
            return TOP
        return Lin(x.src, x.tok)  # adds an h-independent update
    pos = scatter_positions(shape, known[1], p["dimension_numbers"], eqn.invars[2].aval.shape, p["mode"])
    tok = _one_tok([x, u])
    if pos is None or tok is None:
        return TOP
    out = np.array(_src_of(x, shape)).reshape(-1)
    usrc = _src_of(u, tuple(eqn.invars[2].aval.shape))
    keep = pos >= 0
    if len(np.unique(pos[keep])) != int(keep.sum()):
        return TOP  # duplicate targets: which update wins is unspecified
    out[pos[keep]] = usrc[keep]
    return Lin(out.reshape(shape), tok)


for _names, _rule in (("add sub", _addsub), ("neg", _neg), ("mul", _mul), ("div", _div),
                      ("convert_element_type", _convert), ("copy copy_p reduce_precision", _same),
                      ("integer_pow", _integer_pow), ("broadcast_in_dim", _broadcast_in_dim),
                      ("reshape squeeze expand_dims", _reshape), ("transpose", _transpose), ("slice", _slice),
                      ("rev", _rev), ("concatenate", _concatenate), ("pad", _pad), ("select_n", _select_n),
                      ("gather", _gather), ("dynamic_slice", _dynamic_slice),
                      ("dynamic_update_slice", _dynamic_update_slice),
                      ("scatter scatter-add scatter_add scatter-sub scatter_sub", _scatter)):
    primitives.defrule("coefficients", *_names.split())(_rule)
del _names, _rule


def coefficient_kind(rec: Any) -> str | None:
    """"identity", "scalar" or None (not proven) for J = ∂v_new/∂v of ``rec``."""
    D = rec.size
    if D == 0:
        return None
    jp = rec.step_jaxpr
    dom = CoefficientDomain(rounding_for(rec))
    ins = [dom.const(v.aval) for v in jp.jaxpr.invars]
    ins[rec.state_invar] = Lin(np.arange(D), "one")
    out = propagate(jp, ins, dom)[0]
    if isinstance(out, Lin) and out.src.shape == (D,) and np.array_equal(out.src, np.arange(D)):
        return "identity" if out.tok == "one" else "scalar"
    return None


class CoefficientPass(Pass):
    """Provides ``coefficients``: "identity" (J = I), "scalar" (J = a·I, one h-independent a
    per step) or None, proven for every h and x."""

    name = "coefficients"
    provides = ("coefficients",)

    def run(self, rec, facts):
        return {"coefficients": coefficient_kind(rec)}
