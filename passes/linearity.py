"""Degree of the state update in h, by a lattice interpreter over the jaxpr.

The lattice (ordered): constant < affine < piecewise-linear < nonlinear.

* constant — does not depend on h;
* affine — A·h + b with A, b independent of h (sums, scaling by h-independent
  values, shape ops, contractions with one h-independent side);
* piecewise-linear — affine on each piece of a partition (relu / max / abs /
  where with an h-dependent condition): Newton converges in finitely many steps;
* nonlinear — anything else.

The analysis is per array value and syntactic, hence sound: an affine claim
holds for every h and x.
"""

from __future__ import annotations

from typing import Any

from .base import Pass
from .interpret import Domain, propagate
from .sparsity import ELEMENTWISE

__all__ = ["CONSTANT", "AFFINE", "PIECEWISE", "NONLINEAR", "DEGREE_NAMES", "DegreeDomain", "LinearityPass"]

CONSTANT, AFFINE, PIECEWISE, NONLINEAR = 0, 1, 2, 3
DEGREE_NAMES = {CONSTANT: "constant", AFFINE: "affine", PIECEWISE: "piecewise-linear", NONLINEAR: "nonlinear"}

#: Linear in each operand (sums and shape ops): degree is the max of the operands'.
_LINEAR = frozenset(
    """add sub neg convert_element_type copy copy_p broadcast_in_dim reshape squeeze expand_dims transpose
    slice concatenate pad rev reduce_sum cumsum real imag conj complex reduce_precision dynamic_slice
    dynamic_update_slice gather select_and_gather_add""".split()
)
#: Bilinear: affine when at most one operand depends on h.
_BILINEAR = frozenset({"mul", "dot_general"})
#: Piecewise-linear in their operands.
_PIECEWISE = frozenset(
    {"max", "min", "abs", "sign", "clamp", "reduce_max", "reduce_min", "cummax", "cummin", "floor", "ceil", "round",
     "gt", "ge", "lt", "le", "eq", "ne", "argmax", "argmin", "sort", "stop_gradient"}
)


class DegreeDomain(Domain):
    name = "degree"

    def __init__(self) -> None:
        super().__init__()
        self.rules = {}

    def const(self, aval):
        return CONSTANT

    def is_const(self, value):
        return value == CONSTANT

    def default(self, eqn, ins):
        return [NONLINEAR for _ in eqn.outvars]

    def apply(self, eqn, ins):
        name = eqn.primitive.name
        m = max(ins) if ins else CONSTANT
        if m == CONSTANT and name not in self.rules:
            from autopar import _compat

            if not _compat.call_subjaxpr(eqn):
                return [CONSTANT for _ in eqn.outvars]
        if name in self.rules:
            return self.rules[name](self, eqn, ins)
        if name in _LINEAR:
            return [m for _ in eqn.outvars]
        if name in _BILINEAR:
            nonconst = [d for d in ins if d != CONSTANT]
            return [m if len(nonconst) <= 1 else NONLINEAR for _ in eqn.outvars]
        if name == "div":
            return [ins[0] if ins[1] == CONSTANT else NONLINEAR]
        if name == "integer_pow":
            y = eqn.params["y"]
            return [m if y == 1 else NONLINEAR]
        if name == "select_n":
            pred, cases = ins[0], ins[1:]
            cm = max(cases)
            return [max(cm, PIECEWISE) if pred != CONSTANT else cm]
        if name in _PIECEWISE:
            return [max(m, PIECEWISE) if m <= PIECEWISE else NONLINEAR for _ in eqn.outvars]
        return super().apply(eqn, ins)


def degree(rec: Any) -> int:
    jp = rec.step_jaxpr
    ins = [CONSTANT] * len(jp.jaxpr.invars)
    ins[rec.state_invar] = AFFINE
    outs = propagate(jp, ins, DegreeDomain())
    return int(outs[0])


class LinearityPass(Pass):
    """Provides ``degree`` (a name from DEGREE_NAMES) and ``linear`` (affine in h)."""

    name = "linearity"
    provides = ("degree", "linear")

    def run(self, rec, facts):
        d = degree(rec)
        return {"degree": DEGREE_NAMES[d], "linear": d <= AFFINE}
