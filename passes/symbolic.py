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


#: Primitives whose presence keeps a cell polynomial in h (checked before importing sympy).
_POLY = frozenset("""add sub mul div neg integer_pow square convert_element_type copy copy_p broadcast_in_dim reshape
    squeeze expand_dims transpose slice concatenate rev reduce_sum dot_general jit pjit""".split())


def _all_prims(jaxpr, out=None):
    from autopar import _compat

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


def _eval(jaxpr, consts_syms, args, sp, sigma, rounding=None):
    from autopar import _compat

    jp = jaxpr.jaxpr
    env = {}

    def read(a):
        if _compat.is_literal(a):
            v = np.asarray(_compat.literal_value(a))
            return _num(v, sp)
        return env[a]

    for v, c in zip(jp.constvars, consts_syms):
        env[v] = c
    for v, a in zip(jp.invars, args):
        env[v] = a
    for eqn in jp.eqns:
        ins = [read(a) for a in eqn.invars]
        outs = _rule(eqn, ins, sp, sigma, rounding)
        for var, val in zip(eqn.outvars, outs):
            env[var] = val
    return [read(v) for v in jp.outvars]


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
    from autopar import _compat

    name = eqn.primitive.name
    p = eqn.params
    shape = tuple(eqn.outvars[0].aval.shape) if eqn.outvars else ()
    if (rounding or Rounding())(eqn):
        raise _Unsupported(f"{name} lowers the precision (rounding has no exact formula)")
    sub = _compat.call_subjaxpr(eqn)
    if sub is not None and name not in ("scan", "while", "cond"):
        return _eval(sub, [_num(np.asarray(c), sp) for c in sub.consts], ins, sp, sigma, rounding)
    table = {
        "add": _binary(lambda a, b: a + b), "sub": _binary(lambda a, b: a - b), "mul": _binary(lambda a, b: a * b),
        "div": _binary(lambda a, b: a / b), "neg": _unary(lambda a: -a), "exp": _unary(sp.exp), "log": _unary(sp.log),
        "tanh": _unary(sp.tanh), "sin": _unary(sp.sin), "cos": _unary(sp.cos), "logistic": _unary(sigma),
        "sqrt": _unary(sp.sqrt), "rsqrt": _unary(lambda a: 1 / sp.sqrt(a)), "abs": _unary(sp.Abs),
        "max": _binary(sp.Max), "min": _binary(sp.Min), "square": _unary(lambda a: a**2),
        "log1p": _unary(lambda a: sp.log(1 + a)), "expm1": _unary(lambda a: sp.exp(a) - 1),
        "pow": _binary(lambda a, b: a**b),
        "gt": _binary(lambda a, b: sp.StrictGreaterThan(a, b)), "lt": _binary(lambda a, b: sp.StrictLessThan(a, b)),
        "ge": _binary(lambda a, b: sp.GreaterThan(a, b)), "le": _binary(lambda a, b: sp.LessThan(a, b)),
    }
    if name in table:
        return [table[name](ins)]
    if name == "integer_pow":
        return [_unary(lambda a: a ** p["y"])(ins)]
    if name in ("convert_element_type", "copy", "copy_p", "reduce_precision"):
        if not is_inexact(eqn.outvars[0].aval.dtype):
            raise _Unsupported(name)
        return [ins[0]]
    if name == "select_n":
        pred, *cases = ins
        if len(cases) != 2:
            raise _Unsupported(name)
        f = np.vectorize(lambda c, a, b: sp.Piecewise((b, c), (a, True)), otypes=[object])
        return [f(pred, cases[0], cases[1])]
    if name == "broadcast_in_dim":
        x = ins[0]
        expanded = [1] * len(p["shape"])
        for i, d in enumerate(p["broadcast_dimensions"]):
            expanded[d] = x.shape[i]
        return [np.broadcast_to(x.reshape(expanded), tuple(p["shape"])).copy()]
    if name in ("reshape", "squeeze", "expand_dims"):
        return [ins[0].reshape(shape)]
    if name == "transpose":
        return [np.transpose(ins[0], p["permutation"])]
    if name == "slice":
        strides = p.get("strides") or (1,) * len(p["start_indices"])
        return [ins[0][tuple(slice(s, l, st) for s, l, st in zip(p["start_indices"], p["limit_indices"], strides))]]
    if name == "concatenate":
        return [np.concatenate(ins, axis=p["dimension"])]
    if name == "rev":
        return [np.flip(ins[0], p["dimensions"])]
    if name == "reduce_sum":
        out = np.empty(shape, dtype=object)
        moved = np.moveaxis(ins[0], p["axes"], list(range(len(p["axes"])))) if p["axes"] else ins[0]
        red = moved.reshape((-1,) + shape)
        for idx in np.ndindex(shape):
            out[idx] = sp.Add(*red[(slice(None),) + idx])
        return [out]
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        if lb or rb:
            raise _Unsupported("batched dot_general")
        return [np.tensordot(ins[0], ins[1], axes=(list(lc), list(rc))).reshape(shape)]
    raise _Unsupported(name)


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
        if facts.get("degree") in ("affine", "constant") or not _all_prims(rec.step_jaxpr) <= _POLY:
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
