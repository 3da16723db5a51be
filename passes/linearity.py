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


from autopar import _compat, primitives
from autopar.dtypes import is_inexact
from .base import Pass
from .interpret import Domain, propagate
from .indexing import promise_may_break
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


def _linear(dom, eqn, ins):
    return [join(*ins)] * len(eqn.outvars)


def _bilinear_rule(dom, eqn, ins):
    return [_bilinear(*ins[:2]) if len(ins) >= 2 else join(*ins)] * len(eqn.outvars)


def _piecewise(dom, eqn, ins):
    d = _pw(join(*ins))
    return [d] + [min(d, STEP)] * (len(eqn.outvars) - 1)  # (sort / top_k: the other outputs are indices)


def _step(dom, eqn, ins):
    return [STEP if join(*ins) != CONSTANT else CONSTANT] * len(eqn.outvars)


def _smooth_rule(dom, eqn, ins):
    return [_smooth(join(*ins))] * len(eqn.outvars)


#: The degree of each family of ``autopar.primitives`` (``rule``: the row's ``degree`` slot decides).
_FAMILY = {"linear": _linear, "bilinear": _bilinear_rule, "piecewise": _piecewise, "step": _step,
           "smooth": _smooth_rule}


def _indexed(family, sl: slice):
    """A family rule on the data operands; an h-dependent index operand (``sl``) makes it piecewise."""

    def rule(dom, eqn, ins):
        idx = range(*sl.indices(len(ins)))
        d = family(dom, eqn, [v for i, v in enumerate(ins) if i not in idx])[0]
        if any(ins[i] != CONSTANT for i in idx):
            d = join(d, STEP)
        return [d] * len(eqn.outvars)

    return rule


class DegreeDomain(Domain):
    name = "degree"

    def __init__(self, rounding: Rounding | None = None) -> None:
        super().__init__()
        #: which equations count as rounding (``precision.rounding_for``).
        self.rounds = rounding or Rounding()
        #: primitives that round an h-dependent value (their AD rules round tangents too)
        self.rounded: list[str] = []
        #: gathers / scatters of h-dependent data that may break their in-bounds promise
        #: (``indexing.promise_may_break``: forward and reverse mode then disagree)
        self.unsafe_indexing: list[str] = []

    def family_rule(self, t):
        fam = _FAMILY.get(t.degree)
        if fam is not None and t.index_operands is not None:
            return _indexed(fam, t.index_operands)
        return fam

    @staticmethod
    def user_rule(name: str, spec):
        """A ``register_rule(degree=...)`` spec as a rule of this domain (see ``passes.rules``)."""
        named_specs = {"linear": _linear, "piecewise-linear": lambda dom, eqn, ins: [_pw(join(*ins))] * len(eqn.outvars),
                       "nonlinear": _smooth_rule, "zero": _step}
        if isinstance(spec, str):
            return named_specs[spec]

        def named(s):
            if isinstance(s, str) and s in DEGREE_VALUES:
                return DEGREE_VALUES[s]
            raise ValueError(f"user degree rule for {name!r} returned {s!r}; expected one of {list(DEGREE_VALUES)}.")

        def rule(dom, eqn, ins):
            res = spec(eqn, [DEGREE_NAMES[d] for d in ins])
            if isinstance(res, str):
                return [named(res)] * len(eqn.outvars)
            return [named(r) for r in res]

        return rule

    def const(self, aval):
        return CONSTANT

    def is_const(self, value):
        return value == CONSTANT

    def join(self, a, b):
        return join(a, b)

    def _note_unsafe_indexing(self, eqn, ins):
        name = eqn.primitive.name
        if not (name == "gather" or name.startswith("scatter")) or "mode" not in eqn.params:
            return
        data = [d for i, d in enumerate(ins) if i != 1]  # operand (and updates), not the indices
        known = self.known_in[1] if self.known_in is not None and len(self.known_in) > 1 else None
        if any(d != CONSTANT for d in data) and promise_may_break(eqn, known):
            tag = f"{name}[promise_in_bounds]"
            if tag not in self.unsafe_indexing:
                self.unsafe_indexing.append(tag)

    def widen(self, value, aval, ins):
        return NONLINEAR

    def guard(self, selector, outs):
        return [join(o, STEP) for o in outs]

    def default(self, eqn, ins):
        return [NONLINEAR for _ in eqn.outvars]

    def apply(self, eqn, ins):
        self._note_unsafe_indexing(eqn, ins)  # reads known_in, which nested walks overwrite
        outs = super().apply(eqn, ins)
        if self.rounds(eqn):
            # Rounding an affine / piecewise-linear value is neither (a step function stays one).
            outs = [NONLINEAR if o in (AFFINE, PIECEWISE) else o for o in outs]
            if any(d != CONSTANT for d in ins) and eqn.primitive.name not in self.rounded:
                self.rounded.append(eqn.primitive.name)
        # Integer / bool values are step functions of h.
        return [min(o, STEP) if not _inexact(v.aval) and o != CONSTANT else o for o, v in zip(outs, eqn.outvars)]


# ---- slots of the rows whose degree is decided by a rule ----------------------------------------
@primitives.defrule("degree", "div")
def _div(dom, eqn, ins):
    a, b = ins
    if b == CONSTANT:
        return [a]
    if a <= STEP and b <= STEP:
        return [STEP]
    return [PIECEWISE if b == STEP and a in (AFFINE, PIECEWISE) else NONLINEAR]


@primitives.defrule("degree", "integer_pow")
def _integer_pow(dom, eqn, ins):
    y = eqn.params["y"]
    return [CONSTANT if y == 0 else ins[0] if y == 1 else _smooth(ins[0])]


@primitives.defrule("degree", "select_n")
def _select_n(dom, eqn, ins):
    pred, cases = ins[0], ins[1:]
    d = join(*cases)
    return [join(d, STEP) if pred != CONSTANT else d]


@primitives.defrule("degree", "rem")
def _rem(dom, eqn, ins):
    return [_pw(ins[0]) if ins[1] == CONSTANT else _smooth(join(*ins))]


@primitives.defrule("degree", "stop_gradient")
def _stop_gradient(dom, eqn, ins):
    return [NONLINEAR]  # its JVP (zero) is not its derivative: the linear solver must not trust it


@primitives.defrule("degree", "custom_jvp_call")
def _custom_jvp(dom, eqn, ins):
    """An h-dependent custom_jvp call: nonlinear unless its primal is piecewise-linear and its
    rule's Jacobian is piecewise-constant in h (see the module doc)."""
    known = list(dom.known_in)
    sub = _compat.call_subjaxpr(eqn)
    primal = propagate(sub, ins, dom, known=known) if sub is not None else [NONLINEAR] * len(eqn.outvars)
    if PIECEWISE not in primal:
        return [NONLINEAR] * len(primal)  # the rule can only matter for a piecewise-linear primal
    # A rule often computes its primal outputs by calling the function itself (``ans = f(x)``),
    # so its jaxpr can hold this very call again: there only the value matters (its degree is
    # the primal's, found above); this frame already judges the rule.
    key = (eqn.params.get("name"), str(sub))
    active = dom.__dict__.setdefault("_custom_jvp_active", set())
    if key in active:
        return primal
    rule = _compat.custom_jvp_rule(eqn)
    dj = NONLINEAR
    if rule is not None:
        jvp, out_zeros, nc = rule
        n = len(ins) - nc
        # Tangents held constant: the tangent outputs' degree is that of J's entries in h.
        active.add(key)
        try:
            res = propagate(jvp, list(ins[nc:]) + [CONSTANT] * n, dom, known=known[nc:] + [None] * n)
        finally:
            active.discard(key)
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
    them and the adjoint runs per step) and ``unsafe_indexing`` (gathers / scatters of an
    h-dependent value that may break their in-bounds promise, where JAX's forward and reverse
    derivatives disagree: the adjoint runs per step too)."""

    name = "linearity"
    provides = ("degree", "linear", "degree_detail", "rounding", "unsafe_indexing")

    def run(self, rec, facts):
        dom = DegreeDomain(rounding_for(rec))
        d, _ = degree(rec, dom)
        return {"degree": PUBLIC_NAME[d], "linear": d in (CONSTANT, AFFINE), "degree_detail": DEGREE_NAMES[d],
                "rounding": list(dom.rounded), "unsafe_indexing": list(dom.unsafe_indexing)}
