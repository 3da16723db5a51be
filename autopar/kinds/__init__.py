"""The structure kinds of J = ∂f/∂h, one module per kind, and their registry.

The protocol is ``base.Structure``; ``recognise`` tries the registered kinds tightest first.
A new kind is one module plus one line below (docs/structures.md, "Adding a structure kind").
"""

from .base import BlockView, Structure, recognise, register_kind, registered_kinds, unregister_kind
from .block import BlockDiagonal
from .dense import Dense
from .diagonal import Diagonal
from .fixed import Identity, Zero
from .kronecker import Kronecker, kronecker_from_factors
from .lowrank import Householder, LowRank
from .monomial import Monomial
from .scalar import Scalar

__all__ = ["Structure", "BlockView", "register_kind", "unregister_kind", "registered_kinds", "recognise",
           "Zero", "Identity", "Scalar", "Diagonal", "Monomial", "BlockDiagonal", "LowRank", "Householder",
           "Kronecker", "Dense", "kronecker_from_factors"]

# The registry: one line per kind (``order`` sorts them, tightest first).
register_kind(Zero)
register_kind(Identity)
register_kind(Scalar)
register_kind(Diagonal)
register_kind(Monomial)
register_kind(BlockDiagonal)
register_kind(LowRank)
register_kind(Kronecker)
register_kind(Dense)
