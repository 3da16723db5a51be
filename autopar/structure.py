r"""The structure lattice of J = ∂f/∂h and the algebra of each kind's compact form.

A ``Structure`` describes the *shape* of every per-step Jacobian J_t (D × D)
— proven by the analysis passes for all h and x — and knows how to handle its
compact form ``a`` (one time step; the solvers vmap over time):

=================  ========================  ===========  ===============  ===========
kind               J                         compact a    compose a2∘a1    J·v
=================  ========================  ===========  ===============  ===========
zero               0                         ()           —                0
identity           I                         ()           —                v
scalar             α·I                       α: ()        α2·α1            α·v
diagonal           diag(d)                   d: (D,)      d2⊙d1            d⊙v
block-diagonal     P·blkdiag(B_1..B_m)·Pᵀ    B: (m,b,b)   B2_k·B1_k        O(m b²)
dense              J                         J: (D,D)     J2·J1            O(D²)
=================  ========================  ===========  ===============  ===========

``extract(jvp)`` reads the compact form off Jacobian-vector products with as
few tangents as the structure allows (compressed extraction): a diagonal takes
one JVP with a vector of ones; a block-diagonal takes b JVPs — seed p sums the
p-th column of every block, and since the blocks' row sets are disjoint each
row of J·seed_p holds exactly one entry of its own block; dense takes D.

Kinds are extensible: subclass ``Structure``, implement the methods, and the
linear scan, Newton solvers and adjoint pass use it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Structure",
    "Zero",
    "Identity",
    "Scalar",
    "Diagonal",
    "BlockDiagonal",
    "Dense",
    "from_sparsity",
]

_HI = jax.lax.Precision.HIGHEST

JVP = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Structure:
    """Base class: the shape of J (D × D) and the algebra of its compact form."""

    size: int  # D

    kind: ClassVar[str] = "?"
    #: Position in the lattice, tightest first (used by ``join`` and to order candidates).
    order: ClassVar[int] = 100

    # ---- description -------------------------------------------------------------
    def describe(self) -> str:
        return self.kind

    @property
    def n_jvps(self) -> int:
        """JVPs (colours) needed to extract the compact form."""
        raise NotImplementedError

    def pattern(self) -> np.ndarray:
        """Boolean D × D pattern this structure permits."""
        raise NotImplementedError

    # ---- algebra on one step's compact form ---------------------------------------
    def extract(self, jvp: JVP, dtype: Any) -> Any:
        raise NotImplementedError

    def compose(self, a2: Any, a1: Any) -> Any:
        """Compact form of J2 · J1 (apply J1 first)."""
        raise NotImplementedError

    def matvec(self, a: Any, v: jax.Array) -> jax.Array:
        raise NotImplementedError

    def transpose(self, a: Any) -> Any:
        raise NotImplementedError

    def abs_matvec(self, a: Any, x: jax.Array) -> jax.Array:
        """An elementwise upper bound of abs(J)·x for x ≥ 0 (abs(J): the entrywise modulus).

        The default applies ``matvec`` to the moduli of the compact factors, a bound by the
        triangle inequality whenever ``matvec`` is a sum of products of factor entries and v
        with no sign of its own (every built-in kind). A kind whose ``matvec`` builds in a
        sign (e.g. ``v − β k (kᵀv)`` from (β, k)) must override it. The Newton solvers use it
        to scale their per-element stopping rule (``autopar.solvers.convergence``).
        """
        return jnp.real(self.matvec(jax.tree_util.tree_map(jnp.abs, a), x))

    def diagonal(self, a: Any) -> jax.Array:
        raise NotImplementedError

    def to_dense(self, a: Any) -> jax.Array:
        """Materialise J (tests and reports only)."""
        eye = jnp.eye(self.size, dtype=jnp.result_type(*jax.tree_util.tree_leaves(a)) if jax.tree_util.tree_leaves(a) else jnp.float32)
        return jax.vmap(lambda e: self.matvec(a, e), out_axes=1)(eye)

    # ---- cost model (per step, in flops and stored floats) -----------------------
    def compose_flops(self) -> float:
        raise NotImplementedError

    def matvec_flops(self) -> float:
        raise NotImplementedError

    def floats(self) -> float:
        """Floats stored per step for the compact form."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _NoFactor(Structure):
    """Kinds whose J is fixed (0 or I): nothing to extract, store or compose."""

    n_jvps = 0

    def extract(self, jvp, dtype):
        return ()

    def compose(self, a2, a1):
        return ()

    def transpose(self, a):
        return ()

    def compose_flops(self):
        return 0.0

    def matvec_flops(self):
        return 0.0

    def floats(self):
        return 0.0


@dataclasses.dataclass(frozen=True)
class Zero(_NoFactor):
    kind: ClassVar[str] = "zero"
    order: ClassVar[int] = 0

    def pattern(self):
        return np.zeros((self.size, self.size), bool)

    def matvec(self, a, v):
        return jnp.zeros_like(v)

    def diagonal(self, a):
        return jnp.zeros((self.size,))

    def to_dense(self, a):
        return jnp.zeros((self.size, self.size))


@dataclasses.dataclass(frozen=True)
class Identity(_NoFactor):
    kind: ClassVar[str] = "identity"
    order: ClassVar[int] = 1

    def pattern(self):
        return np.eye(self.size, dtype=bool)

    def matvec(self, a, v):
        return v

    def diagonal(self, a):
        return jnp.ones((self.size,))

    def to_dense(self, a):
        return jnp.eye(self.size)


@dataclasses.dataclass(frozen=True)
class Scalar(Structure):
    kind: ClassVar[str] = "scalar"
    order: ClassVar[int] = 2
    n_jvps = 1

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

    def compose_flops(self):
        return 1.0

    def matvec_flops(self):
        return float(self.size)

    def floats(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class Diagonal(Structure):
    kind: ClassVar[str] = "diagonal"
    order: ClassVar[int] = 3
    n_jvps = 1

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

    def compose_flops(self):
        return float(self.size)

    def matvec_flops(self):
        return float(self.size)

    def floats(self):
        return float(self.size)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockDiagonal(Structure):
    """J = P·blkdiag(B_1..B_m)·Pᵀ. ``index[k, p]`` is the state index of the p-th element of
    block k; blocks smaller than ``b`` are padded with the index ``size`` (a dummy slot)."""

    index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.int64))

    kind: ClassVar[str] = "block-diagonal"
    order: ClassVar[int] = 4

    def __eq__(self, other):
        return type(other) is BlockDiagonal and self.size == other.size and np.array_equal(self.index, other.index)

    def __hash__(self):
        return hash((self.size, self.index.tobytes()))

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
        ext = jnp.concatenate([v, jnp.zeros((1,), v.dtype)])
        return ext[jnp.asarray(self.index)]

    def _scatter(self, blocks, dtype):
        out = jnp.zeros((self.size + 1,), dtype).at[jnp.asarray(self.index)].set(blocks)
        return out[: self.size]

    def extract(self, jvp, dtype):
        cols = []
        for p in range(self.block_size):
            seed = self._scatter(jnp.asarray(np.eye(self.block_size)[p][None, :].repeat(self.n_blocks, 0), dtype), dtype)
            cols.append(self._gather(jvp(seed)))  # (m, b): entry [k, i] = B_k[i, p]
        return jnp.stack(cols, axis=-1)  # (m, b, b)

    def compose(self, a2, a1):
        return jnp.einsum("kij,kjl->kil", a2, a1, precision=_HI)

    def matvec(self, a, v):
        blocks = jnp.einsum("kij,kj->ki", a, self._gather(v), precision=_HI)
        return self._scatter(blocks, blocks.dtype)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def diagonal(self, a):
        return self._scatter(jnp.diagonal(a, axis1=-2, axis2=-1), a.dtype)

    def compose_flops(self):
        return 2.0 * self.n_blocks * self.block_size**3

    def matvec_flops(self):
        return 2.0 * self.n_blocks * self.block_size**2

    def floats(self):
        return float(self.n_blocks * self.block_size**2)


@dataclasses.dataclass(frozen=True)
class Dense(Structure):
    kind: ClassVar[str] = "dense"
    order: ClassVar[int] = 99

    @property
    def n_jvps(self) -> int:
        return self.size

    def pattern(self):
        return np.ones((self.size, self.size), bool)

    def extract(self, jvp, dtype):
        eye = jnp.eye(self.size, dtype=dtype)
        return jax.vmap(jvp, out_axes=1)(eye)

    def compose(self, a2, a1):
        return jnp.matmul(a2, a1, precision=_HI)

    def matvec(self, a, v):
        return jnp.matmul(a, v, precision=_HI)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def diagonal(self, a):
        return jnp.diagonal(a, axis1=-2, axis2=-1)

    def to_dense(self, a):
        return a

    def compose_flops(self):
        return 2.0 * self.size**3

    def matvec_flops(self):
        return 2.0 * self.size**2

    def floats(self):
        return float(self.size**2)


def block_index(pattern: np.ndarray) -> np.ndarray | None:
    """Blocks of a symmetric-closure pattern as a padded (m, b) index array, or None if one block.

    Blocks are the connected components of the graph with an edge i–j wherever J[i, j] or
    J[j, i] may be nonzero.
    """
    import networkx as nx

    D = pattern.shape[0]
    g = nx.Graph()
    g.add_nodes_from(range(D))
    rows, cols = np.nonzero(pattern)
    g.add_edges_from(zip(rows.tolist(), cols.tolist()))
    comps = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    if len(comps) <= 1:
        return None
    b = max(len(c) for c in comps)
    index = np.full((len(comps), b), D, dtype=np.int64)
    for k, c in enumerate(comps):
        index[k, : len(c)] = c
    return index


def from_sparsity(pattern: np.ndarray) -> Structure:
    """The tightest pattern-only kind that contains ``pattern`` (zero, diagonal, block, dense).

    Identity and scalar need value-level proofs (see ``autopar.passes``); this function only
    reads where J may be nonzero.
    """
    pattern = np.asarray(pattern, bool)
    D = pattern.shape[0]
    if not pattern.any():
        return Zero(D)
    if not (pattern & ~np.eye(D, dtype=bool)).any():
        return Diagonal(D)
    index = block_index(pattern)
    if index is None:
        return Dense(D)
    b = index.shape[1]
    # A block structure pays off only when it is much smaller than dense.
    if b * 2 > D:
        return Dense(D)
    return BlockDiagonal(D, index)
