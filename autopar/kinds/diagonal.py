"""J = diag(d): compact form d ∈ R^D, one JVP with a vector of ones, elementwise everything."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import BlockView, Structure

__all__ = ["Diagonal"]


@dataclasses.dataclass(frozen=True)
class Diagonal(Structure):
    kind: ClassVar[str] = "diagonal"
    order: ClassVar[int] = 3
    is_diagonal: ClassVar[bool] = True
    n_jvps = 1

    @classmethod
    def recognise(cls, pattern, facts):
        D = pattern.shape[0]
        return cls(D) if not (pattern & ~np.eye(D, dtype=bool)).any() else None

    def pattern(self):
        return np.eye(self.size, dtype=bool)

    def extract(self, jvp, dtype):
        return jvp(jnp.ones((self.size,), dtype))

    def compose(self, a2, a1):
        return a2 * a1

    def matvec(self, a, v):
        return a * v

    def transpose(self, a):
        return a

    def diagonal(self, a):
        return a

    def to_dense(self, a):
        return jnp.diag(a)

    def from_dplr(self, d, U, V):
        return d

    def block_view(self):
        D = self.size
        return BlockView(D, 1, lambda v: v.reshape(D, 1, 1), lambda x: x[..., 0].reshape(D),
                         lambda a: a.reshape(D, 1, 1), diag=True)

    def compose_flops(self, rows=1):
        return float(self.size)

    def matvec_flops(self):
        return float(self.size)

    def floats(self):
        return float(self.size)
