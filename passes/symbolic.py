"""A symbolic view of small cells with sympy: the formula in ``explain()`` and a second
opinion on affinity.

The step jaxpr is evaluated on object arrays of sympy expressions: state elements are the
symbols ``h0, h1, …``, inputs ``x0, …`` (``x{k}_{i}`` when there are several input leaves),
closed-over arrays ``w{k}_{i}``; literals are numbers. Only cells with D ≤ ``MAX_D`` and at
most ``MAX_EQNS`` equations of supported primitives are rendered (others get no formula).

Second opinion: the degree lattice is syntactic, so ``(h + 1)**2 - h**2`` is "nonlinear"
for it. When every output is a polynomial in h (only +, −, ×, integer powers, division by
h-independent values, and functions of h-independent arguments — so no domain restrictions
such as log h or 1/h hide behind a simplification) and every ∂out/∂h_j expands to an
h-independent expression, the cell is affine for every h: ``degree`` is upgraded and a note
says so. A rounding equation (``precision.rounds``: a cast to a narrower float, a
``reduce_precision``) has no exact symbolic form and is not rendered. Custom_jvp calls are
rendered as their primal (the formula shows values), but are not in the polynomial
whitelist, so they never upgrade ``degree`` (JAX differentiates their rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autopar import _compat, primitives
from autopar.dtypes import is_inexact
from .base import Pass
from .precision import Rounding, rounding_for

__all__ = ["SymbolicPass", "symbolic_outputs", "MAX_D", "MAX_EQNS"]

MAX_D = 8
MAX_EQNS = 300
MAX_ELEMS = 256


class _Unsupported(Exception):
    pass


_SYMPY: tuple | None = None


def _sympy():
    global _SYMPY
    if _SYMPY is None:
        import sympy

        class sigma(sympy.Function):  # the logistic function
            def fdiff(self, argindex=1):
                s = sigma(self.args[0])
                return s * (1 - s)

        _SYMPY = (sympy, sigma)
    return _SYMPY


def _polynomial(name: str) -> bool:
    """The row keeps a cell polynomial in h (``polynomial`` in ``autopar.primitives``; checked before
    importing sympy)."""
    t = primitives.row(name)
    return t is not None and t.polynomial


def _all_prims(jaxpr, out=None):
    out = set() if out is None else out
    for eqn in jaxpr.jaxpr.eqns:
        out.add(eqn.primitive.name)
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            _all_prims(sub, out)
    return out


class LazyFormula:
    """The formula string, rendered with sympy only when printed (explain())."""

    def __init__(self, rec):
        self._rec = rec
        self._text: str | None = None
        self._done = False

    def _get(self) -> str | None:
        if not self._done:
            self._done = True
            res = symbolic_outputs(self._rec)
            if res is not None:
                self._text = _render(res[0], self._rec, _sympy()[0])
            self._rec = None
        return self._text

    def __bool__(self):
        return self._get() is not None

    def __str__(self):
        return self._get() or "(no formula)"

    def __repr__(self):
        return repr(str(self))

    def __eq__(self, other):
        return str(self) == other


def _arr(x, shape=()):
    a = np.empty(np.shape(x) if not isinstance(x, np.ndarray) else x.shape, dtype=object)
    a[...] = x
    return a


class _Symbolic(_compat.Interpreter):
    """Values are object arrays of sympy expressions; calls are walked, constants become numbers."""

    def __init__(self, sp, sigma, rounding):
        self.sp, self.sigma, self.rounding = sp, sigma, rounding or Rounding()

    def literal(self, atom):
        return _num(np.asarray(_compat.literal_value(atom)), self.sp)

    def const(self, var, value):
        return _num(np.asarray(value), self.sp)

    def enters(self, eqn, ins):
        return True

    def equation(self, eqn, ins):
        return _rule(eqn, ins, self.sp, self.sigma, self.rounding)


def _eval(jaxpr, consts_syms, args, sp, sigma, rounding=None):
    return _compat.evaluate(jaxpr, args, _Symbolic(sp, sigma, rounding), consts=consts_syms)


def _num(v, sp):
    out = np.empty(v.shape, dtype=object)
    for idx in np.ndindex(v.shape):
        x = v[idx]
        if np.dtype(v.dtype).kind == "b":
            out[idx] = sp.true if bool(x) else sp.false
        elif np.dtype(v.dtype).kind in "iu":
            out[idx] = sp.Integer(int(x))
        elif np.dtype(v.dtype).kind == "c":
            out[idx] = sp.Float(float(x.real), 6) + sp.I * sp.Float(float(x.imag), 6)
        else:
            out[idx] = sp.nsimplify(float(x), rational=False) if float(x).is_integer() else sp.Float(float(x), 6)
    return out


def _unary(fn):
    return lambda ins: np.vectorize(fn, otypes=[object])(ins[0])


def _binary(fn):
    return lambda ins: np.vectorize(fn, otypes=[object])(ins[0], ins[1])


def _rule(eqn, ins, sp, sigma, rounding=None):
    name = eqn.primitive.name
    if (rounding or Rounding())(eqn):
        raise _Unsupported(f"{name} lowers the precision (rounding has no exact formula)")
    t = primitives.row(name)
    rule = None if t is None else t.rules.get("symbolic")
    if rule is None:
        raise _Unsupported(name)
    return rule(eqn, ins, sp, sigma)


# ---- the ``symbolic`` slots: rule(eqn, ins (object arrays), sympy, sigma) -> outputs ----------
def _defunary(names: str, fn):
    primitives.defrule("symbolic", *names.split())(lambda eqn, ins, sp, sigma: [_unary(fn(sp, sigma))(ins)])


def _defbinary(names: str, fn):
    primitives.defrule("symbolic", *names.split())(lambda eqn, ins, sp, sigma: [_binary(fn(sp, sigma))(ins)])


_defbinary("add", lambda sp, s: lambda a, b: a + b)
_defbinary("sub", lambda sp, s: lambda a, b: a - b)
_defbinary("mul", lambda sp, s: lambda a, b: a * b)
_defbinary("div", lambda sp, s: lambda a, b: a / b)
_defbinary("pow", lambda sp, s: lambda a, b: a**b)
_defbinary("max", lambda sp, s: sp.Max)
_defbinary("min", lambda sp, s: sp.Min)
_defbinary("gt", lambda sp, s: sp.StrictGreaterThan)
_defbinary("lt", lambda sp, s: sp.StrictLessThan)
_defbinary("ge", lambda sp, s: sp.GreaterThan)
_defbinary("le", lambda sp, s: sp.LessThan)
_defunary("neg", lambda sp, s: lambda a: -a)
_defunary("square", lambda sp, s: lambda a: a**2)
_defunary("rsqrt", lambda sp, s: lambda a: 1 / sp.sqrt(a))
_defunary("log1p", lambda sp, s: lambda a: sp.log(1 + a))
_defunary("expm1", lambda sp, s: lambda a: sp.exp(a) - 1)
_defunary("logistic", lambda sp, s: s)
_defunary("abs", lambda sp, s: sp.Abs)
for _n in ("exp", "log", "tanh", "sin", "cos", "sqrt"):
    _defunary(_n, lambda sp, s, _n=_n: getattr(sp, _n))
del _n


@primitives.defrule("symbolic", "integer_pow")
def _sym_integer_pow(eqn, ins, sp, sigma):
    return [_unary(lambda a: a ** eqn.params["y"])(ins)]


@primitives.defrule("symbolic", "convert_element_type", "copy", "copy_p", "reduce_precision")
def _sym_same(eqn, ins, sp, sigma):
    if not is_inexact(eqn.outvars[0].aval.dtype):
        raise _Unsupported(eqn.primitive.name)
    return [ins[0]]


@primitives.defrule("symbolic", "select_n")
def _sym_select_n(eqn, ins, sp, sigma):
    pred, *cases = ins
    if len(cases) != 2:
        raise _Unsupported("select_n")
    f = np.vectorize(lambda c, a, b: sp.Piecewise((b, c), (a, True)), otypes=[object])
    return [f(pred, cases[0], cases[1])]


@primitives.defrule("symbolic", "broadcast_in_dim")
def _sym_broadcast_in_dim(eqn, ins, sp, sigma):
    x, p = ins[0], eqn.params
    expanded = [1] * len(p["shape"])
    for i, d in enumerate(p["broadcast_dimensions"]):
        expanded[d] = x.shape[i]
    return [np.broadcast_to(x.reshape(expanded), tuple(p["shape"])).copy()]


@primitives.defrule("symbolic", "reshape", "squeeze", "expand_dims")
def _sym_reshape(eqn, ins, sp, sigma):
    return [ins[0].reshape(tuple(eqn.outvars[0].aval.shape))]


@primitives.defrule("symbolic", "transpose")
def _sym_transpose(eqn, ins, sp, sigma):
    return [np.transpose(ins[0], eqn.params["permutation"])]


@primitives.defrule("symbolic", "slice")
def _sym_slice(eqn, ins, sp, sigma):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    return [ins[0][tuple(slice(s, l, st) for s, l, st in zip(p["start_indices"], p["limit_indices"], strides))]]


@primitives.defrule("symbolic", "concatenate")
def _sym_concatenate(eqn, ins, sp, sigma):
    return [np.concatenate(ins, axis=eqn.params["dimension"])]


@primitives.defrule("symbolic", "rev")
def _sym_rev(eqn, ins, sp, sigma):
    return [np.flip(ins[0], eqn.params["dimensions"])]


@primitives.defrule("symbolic", "reduce_sum")
def _sym_reduce_sum(eqn, ins, sp, sigma):
    axes, shape = eqn.params["axes"], tuple(eqn.outvars[0].aval.shape)
    out = np.empty(shape, dtype=object)
    moved = np.moveaxis(ins[0], axes, list(range(len(axes)))) if axes else ins[0]
    red = moved.reshape((-1,) + shape)
    for idx in np.ndindex(shape):
        out[idx] = sp.Add(*red[(slice(None),) + idx])
    return [out]


@primitives.defrule("symbolic", "dot_general")
def _sym_dot_general(eqn, ins, sp, sigma):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb:
        raise _Unsupported("batched dot_general")
    return [np.tensordot(ins[0], ins[1], axes=(list(lc), list(rc))).reshape(tuple(eqn.outvars[0].aval.shape))]


def symbolic_outputs(rec: Any):
    """(sympy expressions of v_new (D,), state symbols) or None when not renderable."""
    if rec.size == 0 or rec.size > MAX_D or len(rec.step_jaxpr.jaxpr.eqns) > MAX_EQNS or rec.n_discrete:
        return None
    if any(int(np.prod(a.shape, dtype=np.int64)) > MAX_ELEMS for a in rec.x_avals):
        return None
    sp, sigma = _sympy()
    hs = [sp.Symbol(f"h{i}", real=True) for i in range(rec.size)]
    args = [_arr(np.array(hs, dtype=object))]
    many_x = len(rec.x_avals) > 1
    for k, a in enumerate(rec.x_avals):
        n = int(np.prod(a.shape, dtype=np.int64))
        names = [f"x{k}_{i}" if many_x else f"x{i}" for i in range(n)]
        args.append(np.array([sp.Symbol(s, real=True) for s in names] or [], dtype=object).reshape(a.shape))
    consts = []
    for k, c in enumerate(rec.consts):
        shp = np.shape(c)
        n = int(np.prod(shp, dtype=np.int64))
        if n > MAX_ELEMS:
            return None
        if np.dtype(getattr(c, "dtype", np.float32)).kind in "biu":
            try:
                consts.append(_num(np.asarray(c), sp))
                continue
            except Exception:  # noqa: BLE001
                return None
        consts.append(np.array([sp.Symbol(f"w{k}_{i}", real=True) for i in range(n)], dtype=object).reshape(shp))
    try:
        out = _eval(rec.step_jaxpr, consts, args, sp, sigma, rounding_for(rec))[0]
    except (_Unsupported, TypeError, ValueError):
        return None
    return list(np.asarray(out).reshape(-1)), hs


def _polynomial_in(expr, hs, sp) -> bool:
    hset = set(hs)
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Function) or isinstance(node, (sp.Piecewise,)) or node.func in (sp.Max, sp.Min, sp.Abs):
            if node.free_symbols & hset:
                return False
        if isinstance(node, sp.Pow) and node.base.free_symbols & hset:
            if not (node.exp.is_Integer and node.exp >= 0):
                return False
    return True


def _affine(exprs, hs, sp) -> bool:
    hset = set(hs)
    for e in exprs:
        if not _polynomial_in(e, hs, sp):
            return False
        for h in hs:
            if sp.expand(sp.diff(e, h)).free_symbols & hset:
                return False
    return True


def _render(exprs, rec, sp) -> str:
    names = [f"h{i}'" for i in range(len(exprs))]
    shown = list(zip(names, exprs))[: 4]
    parts = [f"{n} = {sp.sstr(e.evalf(4) if e.has(sp.Float) else e)}" for n, e in shown]
    if len(exprs) > 4:
        parts.append(f"… ({len(exprs) - 4} more)")
    return "; ".join(parts)


class SymbolicPass(Pass):
    """Provides ``formula`` (a string, or None) and ``sympy_affine`` (True / False / None);
    upgrades ``degree`` / ``linear`` when sympy proves a polynomial cell affine."""

    name = "symbolic"
    requires = ("degree",)
    provides = ("formula", "sympy_affine")
    refines = ("degree", "linear", "degree_detail", "notes")

    def run(self, rec, facts):
        out = {"formula": None, "sympy_affine": None}
        if rec.size == 0 or rec.size > MAX_D or len(rec.step_jaxpr.jaxpr.eqns) > MAX_EQNS or rec.n_discrete:
            return out
        out["formula"] = LazyFormula(rec)
        if facts.get("degree") in ("affine", "constant") or not all(map(_polynomial, _all_prims(rec.step_jaxpr))):
            return out
        res = symbolic_outputs(rec)
        if res is None:
            return out
        sp = _sympy()[0]
        exprs, hs = res
        aff = _affine(exprs, hs, sp)
        out["sympy_affine"] = aff
        if aff:
            out.update(
                degree="affine", linear=True, degree_detail="affine",
                notes=list(facts.get("notes", [])) + [
                    f"sympy: the cell is a polynomial whose Jacobian does not depend on h, so it is affine "
                    f"(the syntactic degree lattice said {facts.get('degree')})."
                ],
            )
        return out
