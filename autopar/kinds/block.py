r"""J = P·blkdiag(B_1..B_m)·Pᵀ: independent blocks after a permutation of the state.

The blocks are the connected components of the undirected graph with an edge i — j wherever
J[i, j] or J[j, i] may be nonzero. Compact form B: (m, b, b) (blocks smaller than b are padded
with a dummy slot). Extraction takes b JVPs: seed p sums the p-th column of every block, and
since the blocks' row sets are disjoint each row of J·seed_p holds exactly one entry of its own
block. The blocks are also the Kalman smoother's layout (``block_view``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import HI, BlockView, Structure, matmul

__all__ = ["BlockDiagonal", "components", "block_index"]


def _scipy_csgraph():
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        return csr_matrix, connected_components
    except Exception:  # pragma: no cover - scipy is optional
        return None


def components(pattern: np.ndarray) -> list[list[int]]:
    """Connected components of the symmetric closure, each sorted, ordered by first index."""
    P = np.asarray(pattern, bool)
    D = P.shape[0]
    sp = _scipy_csgraph()
    if sp is not None and D > 64:
        csr, cc = sp
        rows, cols = np.nonzero(P)
        g = csr((np.ones(len(rows), np.int8), (rows, cols)), shape=(D, D))
        n, labels = cc(g, directed=True, connection="weak")
    else:
        labels = _components_numpy(P | P.T)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    comps = [c.tolist() for c in np.split(order, bounds)] if D else []
    return sorted(comps, key=lambda c: c[0])


def _components_numpy(S: np.ndarray) -> np.ndarray:
    D = S.shape[0]
    labels = np.full(D, -1, np.int64)
    k = 0
    for i in range(D):
        if labels[i] >= 0:
            continue
        comp = np.zeros(D, bool)
        comp[i] = True
        frontier = comp.copy()
        while frontier.any():
            nxt = S[frontier].any(axis=0) & ~comp
            comp |= nxt
            frontier = nxt
        labels[comp] = k
        k += 1
    return labels


def block_index(pattern: np.ndarray) -> np.ndarray | None:
    """The blocks of ``pattern`` as a padded (m, b) index array (pad: D), or None if one block."""
    D = pattern.shape[0]
    comps = components(pattern)
    if len(comps) <= 1:
        return None
    index = np.full((len(comps), max(len(c) for c in comps)), D, dtype=np.int64)
    for k, c in enumerate(comps):
        index[k, : len(c)] = c
    return index


def gather_blocks(index: np.ndarray, v):
    """v (D,) → (m, b) in the block layout (padding reads 0)."""
    ext = jnp.concatenate([v, jnp.zeros((1,), v.dtype)])
    return ext[jnp.asarray(index)]


def scatter_blocks(index: np.ndarray, size: int, blocks, dtype):
    """(m, b) → (D,): the inverse of ``gather_blocks`` (padding dropped)."""
    out = jnp.zeros((size + 1,), dtype).at[jnp.asarray(index)].set(blocks)
    return out[:size]


def index_view(index: np.ndarray, size: int, mat) -> BlockView:
    """The block view of a permuted block layout ``index``; ``mat``: compact → (m, b, b)."""
    return BlockView(int(index.shape[0]), int(index.shape[1]), lambda v: gather_blocks(index, v)[..., None],
                     lambda x: scatter_blocks(index, size, x[..., 0], x.dtype), mat)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockDiagonal(Structure):
    """J = P·blkdiag(B_1..B_m)·Pᵀ. ``index[k, p]`` is the state index of the p-th element of
    block k; blocks smaller than ``b`` are padded with the index ``size`` (a dummy slot)."""

    index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.int64))

    kind: ClassVar[str] = "block-diagonal"
    order: ClassVar[int] = 5

    @classmethod
    def recognise(cls, pattern, facts):
        D = pattern.shape[0]
        if pattern.all():
            return None
        index = block_index(pattern)
        # a block structure pays off only when it is much smaller than dense
        if index is None or index.shape[1] * 2 > D:
            return None
        return cls(D, index)

    def __eq__(self, other):
        return type(other) is BlockDiagonal and self.size == other.size and np.array_equal(self.index, other.index)

    def __hash__(self):
        return hash((self.size, self.index.tobytes()))

    @property
    def cheap_diagonal(self) -> bool:
        return self.block_size <= 8

    @property
    def n_blocks(self) -> int:
        return int(self.index.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.index.shape[1])

    @property
    def n_jvps(self) -> int:
        return self.block_size

    def describe(self) -> str:
        sizes = sorted({int(np.sum(row < self.size)) for row in self.index})
        sz = "×".join(map(str, sizes)) if len(sizes) > 1 else str(sizes[0])
        return f"block-diagonal ({self.n_blocks} blocks of size {sz})"

    def pattern(self):
        P = np.zeros((self.size + 1, self.size + 1), bool)
        for row in self.index:
            P[np.ix_(row, row)] = True
        return P[: self.size, : self.size]

    def _gather(self, v):
        return gather_blocks(self.index, v)

    def _scatter(self, blocks, dtype):
        return scatter_blocks(self.index, self.size, blocks, dtype)

    def extract(self, jvp, dtype):
        cols = []
        for p in range(self.block_size):
            seed = self._scatter(jnp.asarray(np.eye(self.block_size)[p][None, :].repeat(self.n_blocks, 0), dtype), dtype)
            cols.append(self._gather(jvp(seed)))  # (m, b): entry [k, i] = B_k[i, p]
        return jnp.stack(cols, axis=-1)  # (m, b, b)

    def compose(self, a2, a1):
        return matmul(a2, a1)  # (…, m, b, b) @ (…, m, b, b), per block

    def matvec(self, a, v):
        blocks = jnp.einsum("kij,kj->ki", a, self._gather(v), precision=HI)
        return self._scatter(blocks, blocks.dtype)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def diagonal(self, a):
        return self._scatter(jnp.diagonal(a, axis1=-2, axis2=-1), a.dtype)

    def block_view(self):
        return index_view(self.index, self.size, lambda a: a)

    def compose_flops(self, rows=1):
        return 2.0 * self.n_blocks * self.block_size**3

    def matvec_flops(self):
        return 2.0 * self.n_blocks * self.block_size**2

    def floats(self):
        return float(self.n_blocks * self.block_size**2)

    def scan_elements(self):
        return 4.0 * self.size  # each combine gathers v into blocks and scatters back
