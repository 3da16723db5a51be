"""Structure of J from the proven sparsity pattern (and holomorphy for complex states).

Pattern-only kinds come from ``autopar.structure.from_sparsity``: zero, diagonal,
block-diagonal (connected components of the dependency graph, via networkx) and
dense. Identity and scalar kinds need value-level proofs and are added by the
passes that prove them.
"""

from __future__ import annotations

import numpy as np

from autopar.structure import from_sparsity

from .base import Pass
from .interpret import Domain, propagate

__all__ = ["StructurePass", "HolomorphyPass"]

#: Primitives that are not complex-differentiable when applied to an h-dependent complex value.
NON_HOLOMORPHIC = frozenset({"real", "imag", "conj", "abs", "sign", "max", "min", "gt", "ge", "lt", "le", "eq", "ne"})


class _DependsDomain(Domain):
    """Tracks only *whether* a value depends on h; flags non-holomorphic uses on complex data."""

    def __init__(self):
        super().__init__()
        self.offenders: set[str] = set()

    def const(self, aval):
        return False

    def is_const(self, value):
        return not value

    def default(self, eqn, ins):
        dep = any(ins)
        name = eqn.primitive.name
        if dep:
            complex_in = any(
                np.issubdtype(np.dtype(a.aval.dtype), np.complexfloating)
                for a, d in zip(eqn.invars, ins)
                if d and hasattr(a.aval, "dtype")
            )
            complex_to_real = name == "convert_element_type" and complex_in and not np.issubdtype(
                np.dtype(eqn.params["new_dtype"]), np.complexfloating
            )
            if complex_in and (name in NON_HOLOMORPHIC or complex_to_real):
                self.offenders.add(name)
        return [dep for _ in eqn.outvars]


class HolomorphyPass(Pass):
    """Provides ``holomorphic``: for complex states, whether f is complex-differentiable in h
    (so J is a complex matrix and the parallel solvers apply). Always True for real states."""

    name = "holomorphy"
    provides = ("holomorphic", "non_holomorphic_primitives")

    def run(self, rec, facts):
        if not np.issubdtype(np.dtype(rec.layout.vec_dtype), np.complexfloating):
            return {"holomorphic": True, "non_holomorphic_primitives": []}
        dom = _DependsDomain()
        dom.rules = {}
        ins = [False] * len(rec.step_jaxpr.jaxpr.invars)
        ins[rec.state_invar] = True
        propagate(rec.step_jaxpr, ins, dom)
        return {"holomorphic": not dom.offenders, "non_holomorphic_primitives": sorted(dom.offenders)}


class StructurePass(Pass):
    """Provides ``structure``: the tightest kind proven for J (an autopar.structure.Structure)."""

    name = "structure"
    requires = ("sparsity",)
    provides = ("structure",)

    def run(self, rec, facts):
        return {"structure": from_sparsity(facts["sparsity"])}
