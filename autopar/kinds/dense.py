"""J dense (D × D): D JVPs to extract, O(D³) per combine. Admits every pattern (the top)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .base import HI, BlockView, Structure, matmul

__all__ = ["Dense"]


@dataclasses.dataclass(frozen=True)
class Dense(Structure):
    kind: ClassVar[str] = "dense"
    order: ClassVar[int] = 99

    @classmethod
    def recognise(cls, pattern, facts):
        return cls(pattern.shape[0])

    @property
    def n_jvps(self) -> int:
        return self.size

    def pattern(self):
        return np.ones((self.size, self.size), bool)

    def extract(self, jvp, dtype):
        eye = jnp.eye(self.size, dtype=dtype)
        return jax.vmap(jvp, out_axes=1)(eye)

    def compose(self, a2, a1):
        return matmul(a2, a1)

    def matvec(self, a, v):
        return jnp.matmul(a, v, precision=HI)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def diagonal(self, a):
        return jnp.diagonal(a, axis1=-2, axis2=-1)

    def to_dense(self, a):
        return a

    def from_dplr(self, d, U, V):
        return jax.vmap(jnp.diag)(d) + jnp.einsum("hqr,hsr->hqs", U, V, precision=HI)

    def block_view(self):
        D = self.size
        return BlockView(1, D, lambda v: v.reshape(1, D, 1), lambda x: x[..., 0].reshape(D),
                         lambda a: a.reshape(1, D, D))

    def compose_flops(self, rows=1):
        return 2.0 * self.size**3

    def matvec_flops(self):
        return 2.0 * self.size**2

    def floats(self):
        return float(self.size**2)
