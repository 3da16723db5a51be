"""Kinds whose J is fixed: zero (h does not feed back) and identity (J = I, e.g. a running sum).

Nothing to extract, store or compose; each overrides ``scan`` with its closed form
(v_t = b_t, and v_t = v_0 + b_1 + … + b_t).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import Structure

__all__ = ["Zero", "Identity"]


@dataclasses.dataclass(frozen=True)
class _NoFactor(Structure):
    n_jvps = 0
    is_diagonal: ClassVar[bool] = True

    def extract(self, jvp, dtype):
        return ()

    def compose(self, a2, a1):
        return ()

    def transpose(self, a):
        return ()

    def compose_flops(self, rows=1):
        return 0.0

    def matvec_flops(self):
        return 0.0

    def floats(self):
        return 0.0


@dataclasses.dataclass(frozen=True)
class Zero(_NoFactor):
    """J = 0: the new state does not read h (a plain map, no scan)."""

    kind: ClassVar[str] = "zero"
    order: ClassVar[int] = 0

    @classmethod
    def recognise(cls, pattern, facts):
        # a zero *derivative* pattern alone (floor(h)) is a zero diagonal: zero needs h unread
        return cls(pattern.shape[0]) if not pattern.any() and not facts.get("reads_h", True) else None

    def pattern(self):
        return np.zeros((self.size, self.size), bool)

    def matvec(self, a, v):
        return jnp.zeros_like(v)

    def diagonal(self, a):
        return jnp.zeros((self.size,))

    def to_dense(self, a):
        return jnp.zeros((self.size, self.size))

    def scan(self, a, b, v0):
        return b


@dataclasses.dataclass(frozen=True)
class Identity(_NoFactor):
    """J = I (proven at the value level by the coefficient pass)."""

    kind: ClassVar[str] = "identity"
    order: ClassVar[int] = 1

    @classmethod
    def recognise(cls, pattern, facts):
        return cls(pattern.shape[0]) if facts.get("coefficients") == "identity" else None

    def pattern(self):
        return np.eye(self.size, dtype=bool)

    def matvec(self, a, v):
        return v

    def diagonal(self, a):
        return jnp.ones((self.size,))

    def to_dense(self, a):
        return jnp.eye(self.size)

    def from_dplr(self, d, U, V):
        return ()

    def scan(self, a, b, v0):
        return jnp.cumsum(b.at[0].add(v0), axis=0)
