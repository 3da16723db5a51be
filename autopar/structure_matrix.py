"""Structure kinds for matrix-valued states: Kronecker (one-sided action) and low-rank inner
factors. They live in ``autopar.kinds.kronecker`` and ``autopar.kinds.lowrank``; the names are
kept here."""

from .kinds.kronecker import Kronecker, kronecker_from_factors
from .kinds.lowrank import Householder, LowRank

__all__ = ["LowRank", "Householder", "Kronecker", "kronecker_from_factors"]
