r"""The structure lattice of J = ∂f/∂h and the algebra of each kind's compact form.

A ``Structure`` describes the *shape* of every per-step Jacobian J_t (D × D) — proven by the
analysis passes for all h and x — and owns the algebra of its compact form ``a`` (one time
step; the solvers vmap over time). The protocol and the registry are ``autopar.kinds.base``;
each kind lives in its own module under ``autopar.kinds``:

=================  ========================  ===========  ===============  ===========
kind               J                         compact a    compose a2∘a1    J·v
=================  ========================  ===========  ===============  ===========
zero               0                         ()           —                0
identity           I                         ()           —                v
scalar             α·I                       α: ()        α2·α1            α·v
diagonal           diag(d)                   d: (D,)      d2⊙d1            d⊙v
monomial           P·diag(a)                 (a, σ)       (a2⊙a1[σ2],      a⊙v[σ]
                                                          σ1[σ2])
block-diagonal     P·blkdiag(B_1..B_m)·Pᵀ    B: (m,b,b)   B2_k·B1_k        O(m b²)
dense              J                         J: (D,D)     J2·J1            O(D²)
=================  ========================  ===========  ===============  ===========

(matrix-valued states: ``autopar.structure_matrix``). ``extract(jvp)`` reads the compact form
off Jacobian-vector products with as few tangents as the structure allows; ``from_sparsity``
picks the tightest registered kind that admits a proven sparsity pattern.
"""

from __future__ import annotations

import numpy as np

from .kinds import (BlockDiagonal, BlockView, Dense, Diagonal, Identity, Monomial, Scalar, Structure, Zero,
                    recognise, register_kind, registered_kinds, unregister_kind)
from .kinds.base import JVP  # noqa: F401 - kept importable from here
from .kinds.block import block_index  # noqa: F401

__all__ = [
    "Structure",
    "BlockView",
    "Zero",
    "Identity",
    "Scalar",
    "Diagonal",
    "Monomial",
    "BlockDiagonal",
    "Dense",
    "from_sparsity",
    "register_kind",
    "unregister_kind",
    "registered_kinds",
]



def from_sparsity(pattern: np.ndarray) -> Structure:
    """The tightest pattern-only kind that contains ``pattern`` (zero, diagonal, monomial, block,
    dense). Identity and scalar need value-level proofs (see ``autopar.passes``)."""
    return recognise(np.asarray(pattern, bool), {"reads_h": False})
