"""J = α·I (proven at the value level by the coefficient pass): compact form α, one JVP."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import Structure

__all__ = ["Scalar"]


@dataclasses.dataclass(frozen=True)
class Scalar(Structure):
    kind: ClassVar[str] = "scalar"
    order: ClassVar[int] = 2
    is_diagonal: ClassVar[bool] = True
    n_jvps = 1

    @classmethod
    def recognise(cls, pattern, facts):
        return cls(pattern.shape[0]) if facts.get("coefficients") == "scalar" else None

    def pattern(self):
        return np.eye(self.size, dtype=bool)

    def extract(self, jvp, dtype):
        return jvp(jnp.ones((self.size,), dtype))[0]

    def compose(self, a2, a1):
        return a2 * a1

    def matvec(self, a, v):
        return a * v

    def transpose(self, a):
        return a

    def diagonal(self, a):
        return jnp.full((self.size,), a)

    def from_dplr(self, d, U, V):
        return d[:, 0]

    def compose_flops(self, rows=1):
        return 1.0

    def matvec_flops(self):
        return float(self.size)

    def floats(self):
        return 1.0
