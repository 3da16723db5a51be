r"""M = diag(d) + U Vᵀ (q × q) of rank r: products of Householder-like factors (I − β k kᵀ), DPLR.

DeltaNet, DeltaProduct, RWKV-7, KDA. ``dkind``: the diagonal part is "zero", "identity",
"scalar" (d: (1,)) or "diagonal" (d: (q,)); compact form ``(d, U, V)``. The rank of a product
grows, so there is no closed ``compose``: ``scan`` composes C factors per chunk in WY form and
scans dense q × q chunk transitions (``dplr_scan``). Used as a Kronecker inner factor.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import HI, Structure
from .dplr_scan import chunked_dplr_scan, default_chunk

__all__ = ["LowRank", "Householder"]


@dataclasses.dataclass(frozen=True)
class LowRank(Structure):
    rank: int = 1
    dkind: str = "identity"
    chunk: int = 0  # chunk length of the WY scan (0: automatic)

    kind: ClassVar[str] = "householder"
    order: ClassVar[int] = 6
    n_jvps = 1

    def describe(self) -> str:
        return f"householder (diag: {self.dkind}, rank {self.rank})"

    def pattern(self):
        return np.ones((self.size, self.size), bool)

    def matvec(self, a, v):
        d, U, V = a
        return d * v + jnp.matmul(U, jnp.matmul(v, V, precision=HI), precision=HI)

    def transpose(self, a):
        d, U, V = a
        return (d, V, U)

    def diagonal(self, a):
        d, U, V = a
        return jnp.broadcast_to(d, (self.size,)) + jnp.sum(U * V, -1)

    def to_dense(self, a):
        d, U, V = a
        return jnp.diag(jnp.broadcast_to(d, (self.size,))) + jnp.matmul(U, V.T, precision=HI)

    def compose(self, a2, a1):
        raise NotImplementedError(
            "the product of two low-rank factors has a larger rank; LowRank.scan composes them in "
            "chunks (autopar.kinds.dplr_scan) instead of pairwise."
        )

    def from_dplr(self, d, U, V):
        if U.shape[-1] != self.rank:
            raise RuntimeError(f"matrix_state: run-time rank {U.shape[-1]} differs from the proven rank {self.rank}")
        return (d if self.dkind == "diagonal" else d[:, :1]), U, V

    def chunk_size(self, T: int) -> int:
        if self.chunk:
            return int(max(1, min(self.chunk, max(T, 1))))
        return default_chunk(T, self.size, max(self.rank, 1), self.dkind == "diagonal")

    def scan(self, a, b, v0):
        """The chunked WY / UT scan; ``b`` (T, *R, q): the rows R share one triangular solve."""
        d, U, V = a
        T = b.shape[0]
        rows, x0 = b.reshape(T, -1, self.size), v0.reshape(-1, self.size)
        out = chunked_dplr_scan(d[:, None], U[:, None], V[:, None], rows[:, None], x0[None], self.chunk_size(T))
        return out[:, 0].reshape(b.shape)

    def compose_flops(self, rows=1):
        """Per step of the chunked scan (chunks of C, ``rows`` vectors sharing M), amortised."""
        C, q, r, p = self.chunk_size(4096), self.size, max(self.rank, 1), rows
        return float(2 * C * q * r * r + 4 * (p + q) * q * r + 2 * (p + q) * q * q / C)

    def scan_overhead(self, rows=1):
        """The chunked scan's many small batched ops (two within-chunk scans, the einsums, the
        triangular solve of the C·r system) run far below their flop rate: measured on XLA:CPU
        (2-core EPYC; q = p = 4, 8, 16; T = 512 … 65536, flat in T) at ≈ 12 floats per state float
        per step plus 13·C·r² for the per-chunk system, in units of ``scan_elem_time``."""
        C, r = self.chunk_size(4096), max(self.rank, 1)
        return float(12 * rows * self.size + 13 * C * r * r)

    def matvec_flops(self):
        return 4.0 * self.size * self.rank + self.size

    def floats(self):
        return float(2 * self.size * self.rank + (self.size if self.dkind == "diagonal" else 1))


Householder = LowRank
