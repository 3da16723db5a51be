"""Structure of J from the proven facts (and holomorphy for complex states).

``StructurePass`` picks the tightest kind that every proof supports:

it asks the registered kinds (``autopar.kinds``), tightest first, which admits the proven
sparsity pattern and value-level facts:

* zero — the new state does not read h at all (dead-code analysis of the jaxpr; a zero
  *derivative* pattern alone, e.g. ``floor(h)``, is reported as a zero diagonal instead);
* identity / scalar — from the coefficient proof (``coefficients``);
* diagonal — no off-diagonal entry in the sparsity pattern;
* monomial — at most one entry per row and per column (a permutation times a diagonal);
* block-diagonal — connected components of the dependency graph give the permutation and
  block sizes (worth it while the largest block is at most D/2);
* dense — otherwise. For dense J the strongly connected components of the directed
  dependency graph are reported as ``block_triangular`` when there are several (two stacked
  layers: the second reads the first, never the other way round).

``ColouringPass`` provides ``colors``: a greedy colouring of the column-intersection graph
(columns that share no row share one JVP in compressed extraction).
"""

from __future__ import annotations

import numpy as np

from autopar import _compat, primitives
from autopar.structure import recognise

from .base import Pass
from .graph import greedy_colouring, triangular_blocks
from .interpret import Domain, propagate

__all__ = ["StructurePass", "HolomorphyPass", "ColouringPass", "structure_from_pattern", "reads_state"]


class _DependsDomain(Domain):
    """Tracks only *whether* a value depends on h; flags non-holomorphic uses on complex data."""

    def __init__(self):
        super().__init__()
        self.offenders: set[str] = set()

    def const(self, aval):
        return False

    def is_const(self, value):
        return not value

    def join(self, a, b):
        return bool(a or b)

    def widen(self, value, aval, ins):
        return True

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
            t = primitives.row(name)
            if complex_in and ((t is not None and not t.holomorphic) or complex_to_real):
                self.offenders.add(name)
        return [dep for _ in eqn.outvars]

    def apply(self, eqn, ins):
        out = super().apply(eqn, ins)
        self.unknown.discard(eqn.primitive.name)
        return out


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


def reads_state(rec) -> bool:
    """Whether the new float state reads the float state at all (syntactic, via DCE)."""
    n_out = len(rec.step_jaxpr.jaxpr.outvars)
    _, used = _compat.dce(rec.step_jaxpr, [True] + [False] * (n_out - 1))
    return bool(used[rec.state_invar])


def structure_from_pattern(pattern: np.ndarray, *, reads_h: bool = True):
    """Tightest pattern-only kind holding ``pattern`` (the registered kinds, tightest first)."""
    return recognise(np.asarray(pattern, bool), {"reads_h": reads_h})


class StructurePass(Pass):
    """Provides ``structure`` (an autopar.structure.Structure: the tightest kind proven for J),
    ``block_triangular`` (None, or the state index groups in an order that makes a dense J
    block lower-triangular) and ``notes``."""

    name = "structure"
    requires = ("sparsity", "coefficients")
    provides = ("structure", "block_triangular", "notes")

    def run(self, rec, facts):
        S = np.asarray(facts["sparsity"], bool)
        D = S.shape[0]
        notes = list(facts.get("notes", []))
        # whether h is read at all matters only for an all-zero pattern (zero vs a zero diagonal)
        reads_h = bool(D) and (S.any() or reads_state(rec))
        st = recognise(S, {"coefficients": facts.get("coefficients"), "reads_h": reads_h})
        tri = None
        if st.n_jvps == D and D > 1 and not S.all():  # no kind tighter than dense admits S
            groups = triangular_blocks(S)
            if groups is not None and len(groups) > 1:
                tri = {"blocks": groups, "sizes": [len(g) for g in groups]}
                notes.append(
                    f"J is block lower-triangular after a permutation: {len(groups)} diagonal blocks of sizes "
                    f"{tri['sizes']} (e.g. stacked layers: each block reads only the blocks before it)."
                )
        return {"structure": st, "block_triangular": tri, "notes": notes}


class ColouringPass(Pass):
    """Provides ``colors``: ``{"n": k, "coloring": int array (D,)}``, a greedy colouring of the
    column-intersection graph of the sparsity pattern (k JVPs extract a J with this pattern)."""

    name = "colouring"
    requires = ("sparsity", "structure")
    provides = ("colors",)
    refines = ("notes",)

    def run(self, rec, facts):
        S = np.asarray(facts["sparsity"], bool)
        col = greedy_colouring(S)
        n = int(col.max()) + 1 if col.size and S.any() else 0
        notes = list(facts.get("notes", []))
        if S.any():
            notes.append(f"compressed extraction: the sparsity pattern needs {n} colour{'s' if n != 1 else ''} "
                         f"(JVPs) per step; the {facts['structure'].kind} structure uses {facts['structure'].n_jvps}.")
        return {"colors": {"n": n, "coloring": col}, "notes": notes}
