"""Degree of the state update in h, by a lattice interpreter over the jaxpr.

The lattice (⊑), with its join written ⊔:

    constant ⊑ piecewise-constant ⊑ piecewise-linear ⊑ nonlinear
    constant ⊑ affine             ⊑ piecewise-linear

* constant — does not depend on h;
* piecewise-constant — a step function of h: integer / bool values computed from h
  (comparisons, argmax, indices), floor / round / sign;
* affine — A·h + b with A, b independent of h (sums, scaling by h-independent values,
  shape ops, contractions with one h-independent side, gathers with h-independent indices);
* piecewise-linear — affine on each piece of a partition: relu / max / abs / clamp / sort,
  a where / cond / gather whose selector depends on h, a product of an affine and a
  piecewise-constant value; Newton converges in finitely many steps;
* nonlinear — anything else (and ``stop_gradient`` of an h-dependent value, whose JVP is
  not its derivative, so the linear solver must not trust it). Rounding an h-dependent value
  to a lower precision (``astype(bfloat16)``, ``reduce_precision``, a narrow
  ``preferred_element_type``; see ``precision``) is nonlinear too: rounding is not affine,
  although its JVP is the identity.
* custom_jvp calls: JAX differentiates them with their JVP rule, not with the primal, and
  an affine primal with an arbitrary rule is not something the linear solver may trust, so
  an h-dependent call is nonlinear — except that a piecewise-linear primal whose rule's
  Jacobian is piecewise-constant in h (``jax.nn.relu``) stays piecewise-linear.

Nested jaxprs recurse, ``cond`` joins its branches (⊔ piecewise-constant when the index
depends on h), ``scan`` / ``while`` iterate to a fixpoint. The analysis is syntactic,
hence sound: an affine claim holds for every h and x.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autopar import _compat
from autopar.dtypes import is_inexact
from .base import Pass
from .interpret import Domain, propagate
from .precision import Rounding, rounding_for

__all__ = ["CONSTANT", "STEP", "AFFINE", "PIECEWISE", "NONLINEAR", "DEGREE_NAMES", "DegreeDomain", "LinearityPass",
           "join", "degree"]

CONSTANT, STEP, AFFINE, PIECEWISE, NONLINEAR = 0, 1, 2, 3, 4
DEGREE_NAMES = {CONSTANT: "constant", STEP: "piecewise-constant", AFFINE: "affine", PIECEWISE: "piecewise-linear",
                NONLINEAR: "nonlinear"}
DEGREE_VALUES = {v: k for k, v in DEGREE_NAMES.items()}
#: The public ``degree`` fact uses four names; a step function is reported as piecewise-linear.
PUBLIC_NAME = {**DEGREE_NAMES, STEP: "piecewise-linear"}


def join(*ds: int) -> int:
    out = CONSTANT
    for d in ds:
        if {out, d} == {STEP, AFFINE}:
            out = PIECEWISE
        else:
            out = max(out, d)
    return out


def _pw(d: int) -> int:
    """A piecewise-linear function (max, abs, selection) of a value of degree d."""
    return PIECEWISE if d == AFFINE else d


def _smooth(d: int) -> int:
    """A smooth nonlinear function of a value of degree d."""
    return d if d <= STEP else NONLINEAR


def _bilinear(a: int, b: int) -> int:
    if a == CONSTANT:
        return b
    if b == CONSTANT:
        return a
    if a <= STEP and b <= STEP:
        return STEP
    if STEP in (a, b) and max(a, b) in (AFFINE, PIECEWISE):
        return PIECEWISE
    return NONLINEAR


#: Linear in each data operand (sums and shape ops).
LINEAR = frozenset(
    """add sub neg convert_element_type copy copy_p broadcast_in_dim reshape squeeze expand_dims transpose
    slice concatenate pad rev reduce_sum cumsum real imag conj complex reduce_precision dynamic_slice
    dynamic_update_slice gather scatter scatter-add scatter_add scatter-sub scatter_sub split
    select_and_gather_add""".split()
)
#: Operands that select *where* to read or write (indices): an h-dependent one makes the result piecewise.
INDEX_OPERANDS = {"gather": slice(1, 2), "scatter": slice(1, 2), "scatter-add": slice(1, 2), "scatter_add": slice(1, 2),
                  "scatter-sub": slice(1, 2), "scatter_sub": slice(1, 2), "scatter-mul": slice(1, 2),
                  "scatter_mul": slice(1, 2), "scatter-min": slice(1, 2), "scatter-max": slice(1, 2),
                  "scatter_min": slice(1, 2), "scatter_max": slice(1, 2), "dynamic_slice": slice(1, None),
                  "dynamic_update_slice": slice(2, None)}
BILINEAR = frozenset({"mul", "dot_general", "scatter-mul", "scatter_mul"})
PIECEWISE_OPS = frozenset(
    {"max", "min", "abs", "clamp", "reduce_max", "reduce_min", "cummax", "cummin", "sort", "top_k",
     "scatter-min", "scatter-max", "scatter_min", "scatter_max"}
)
STEP_OPS = frozenset({"floor", "ceil", "round", "sign", "gt", "ge", "lt", "le", "eq", "ne", "argmax", "argmin",
                      "is_finite", "not", "and", "or", "xor", "population_count", "clz", "shift_left",
                      "shift_right_arithmetic", "shift_right_logical", "iota"})
SMOOTH = frozenset(
    """exp exp2 expm1 log log1p tanh logistic sin cos tan asin acos atan asinh acosh atanh sinh cosh sqrt rsqrt
    cbrt erf erfc erf_inv lgamma digamma igamma igammac square pow atan2 cumprod cumlogsumexp reduce_prod
    polygamma zeta bessel_i0e bessel_i1e nextafter""".split()
)


class DegreeDomain(Domain):
    name = "degree"

    def __init__(self, rounding: Rounding | None = None) -> None:
        super().__init__()
        from .rules import user_rules

        self.rules = user_rules("degree", self)
        #: which equations count as rounding (``precision.rounding_for``).
        self.rounds = rounding or Rounding()
        #: primitives that round an h-dependent value (their AD rules round tangents too)
        self.rounded: list[str] = []

    def const(self, aval):
        return CONSTANT

    def is_const(self, value):
        return value == CONSTANT

    def join(self, a, b):
        return join(a, b)

    def widen(self, value, aval, ins):
        return NONLINEAR

    def guard(self, selector, outs):
        return [join(o, STEP) for o in outs]

    def default(self, eqn, ins):
        return [NONLINEAR for _ in eqn.outvars]

    def apply(self, eqn, ins):
        outs = self._apply(eqn, ins)
        if self.rounds(eqn):
            # Rounding an affine / piecewise-linear value is neither (a step function stays one).
            outs = [NONLINEAR if o in (AFFINE, PIECEWISE) else o for o in outs]
            if any(d != CONSTANT for d in ins) and eqn.primitive.name not in self.rounded:
                self.rounded.append(eqn.primitive.name)
        # Integer / bool values are step functions of h.
        return [min(o, STEP) if not _inexact(v.aval) and o != CONSTANT else o for o, v in zip(outs, eqn.outvars)]

    def _apply(self, eqn, ins):
        name = eqn.primitive.name
        n = len(eqn.outvars)
        if all(d == CONSTANT for d in ins) or name in self.rules:
            return super().apply(eqn, ins)
        if _compat.is_custom_jvp(eqn):
            return self._custom_jvp(eqn, ins)
        if name in INDEX_OPERANDS:
            sl = INDEX_OPERANDS[name]
            idx = ins[sl]
            data = [d for i, d in enumerate(ins) if i not in range(*sl.indices(len(ins)))]
            if name in BILINEAR:
                d = _bilinear(*data[:2]) if len(data) >= 2 else join(*data)
            elif name in PIECEWISE_OPS:
                d = _pw(join(*data))
            else:
                d = join(*data)
            if any(i != CONSTANT for i in idx):
                d = join(d, STEP)
            return [d] * n
        if name in LINEAR:
            return [join(*ins)] * n
        if name in BILINEAR:
            return [_bilinear(ins[0], ins[1])]
        if name == "div":
            a, b = ins
            if b == CONSTANT:
                return [a]
            if a <= STEP and b <= STEP:
                return [STEP]
            return [PIECEWISE if b == STEP and a in (AFFINE, PIECEWISE) else NONLINEAR]
        if name == "integer_pow":
            y = eqn.params["y"]
            return [CONSTANT if y == 0 else ins[0] if y == 1 else _smooth(ins[0])]
        if name == "select_n":
            pred, cases = ins[0], ins[1:]
            d = join(*cases)
            return [join(d, STEP) if pred != CONSTANT else d]
        if name == "rem":
            return [_pw(ins[0]) if ins[1] == CONSTANT else _smooth(join(*ins))]
        if name in PIECEWISE_OPS:
            d = _pw(join(*ins))
            return [d] + [min(d, STEP)] * (n - 1)
        if name in STEP_OPS:
            return [STEP if join(*ins) != CONSTANT else CONSTANT] * n
        if name == "stop_gradient":
            return [NONLINEAR]
        if name in SMOOTH:
            return [_smooth(join(*ins))] * n
        return super().apply(eqn, ins)

    def _custom_jvp(self, eqn, ins):
        """An h-dependent custom_jvp call: nonlinear unless its primal is piecewise-linear and its
        rule's Jacobian is piecewise-constant in h (see the module doc)."""
        known = list(self.known_in)
        sub = _compat.call_subjaxpr(eqn)
        primal = propagate(sub, ins, self, known=known) if sub is not None else [NONLINEAR] * len(eqn.outvars)
        rule = _compat.custom_jvp_rule(eqn)
        dj = NONLINEAR
        if rule is not None:
            jvp, out_zeros, nc = rule
            n = len(ins) - nc
            # Tangents held constant: the tangent outputs' degree is that of J's entries in h.
            res = propagate(jvp, list(ins[nc:]) + [CONSTANT] * n, self, known=known[nc:] + [None] * n)
            dj = join(*res[len(eqn.outvars):])
            if any(d != CONSTANT for d in ins[:nc]):
                dj = NONLINEAR  # h-dependent closed-over constants: their derivative is not the rule's
        return [PIECEWISE if (dp == PIECEWISE and dj <= STEP) else NONLINEAR for dp in primal]


def _inexact(aval) -> bool:
    dt = getattr(aval, "dtype", None)
    return is_inexact(dt)


def degree(rec: Any, domain: "DegreeDomain | None" = None) -> tuple[int, set[str]]:
    """Degree (an int of this module's lattice) of ``v_new`` in ``v``, and primitives without a rule."""
    jp = rec.step_jaxpr
    ins = [CONSTANT] * len(jp.jaxpr.invars)
    ins[rec.state_invar] = AFFINE
    dom = domain or DegreeDomain(rounding_for(rec))
    outs = propagate(jp, ins, dom)
    return int(outs[0]), set(dom.unknown)


class LinearityPass(Pass):
    """Provides ``degree`` ("constant" | "affine" | "piecewise-linear" | "nonlinear"), ``linear``
    (affine in h: the linear solver is exact), ``degree_detail`` (the lattice element,
    which also distinguishes "piecewise-constant") and ``rounding`` (the primitives that round
    an h-dependent value: JAX's AD rules round the tangents too, so no compact J reproduces
    them and the adjoint runs per step)."""

    name = "linearity"
    provides = ("degree", "linear", "degree_detail", "rounding")

    def run(self, rec, facts):
        dom = DegreeDomain(rounding_for(rec))
        d, _ = degree(rec, dom)
        return {"degree": PUBLIC_NAME[d], "linear": d in (CONSTANT, AFFINE), "degree_detail": DEGREE_NAMES[d],
                "rounding": list(dom.rounded)}
