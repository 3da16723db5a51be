r"""Structure kinds for matrix-valued states: Kronecker (one-sided action) and low-rank inner factors.

**Layout.** A state leaf S of shape (*B, m, n) is raveled row-major into v (see
``autopar.trace.LeafInfo``). Heads B are flattened to H. A *left* action
S_b ↦ M_b S_b has J = blkdiag_b(M_b ⊗ I_n); a *right* action S_b ↦ S_b A_b has
J = blkdiag_b(I_m ⊗ A_bᵀ). Both are handled in one canonical form: the p vectors
x_i ∈ R^q that M acts on are the rows of X (H, p, q) —

    right:  q = n, p = m, X = S,       x_i ↦ M x_i  (M = Aᵀ)
    left:   q = m, p = n, X = Sᵀ,      x_i ↦ M x_i

so J·v = canon⁻¹(X Mᵀ) and Jᵀ is the same with Mᵀ (``transpose`` transposes the inner
factor; the side is unchanged).

=====================  ==================  =========================================
inner kind             compact (per head)  compose / scan
=====================  ==================  =========================================
identity               ()                  cumsum, O(T·p·q)
scalar                 α: (H,)             α2·α1, O(T·p·q)
diagonal               d: (H, q)           d2⊙d1, O(T·p·q)
householder (DPLR)     (d, U, V)           chunked WY/UT scan (solvers/chunked.py)
dense                  M: (H, q, q)        M2·M1, O(q³) per combine
=====================  ==================  =========================================

with householder M = diag(d) + U Vᵀ, U, V: (H, q, r); d: (H, 1) when the diagonal part
is identity/scalar/zero, (H, q) when it is a diagonal. The rank of a product grows,
so the low-rank kind has no closed ``compose``: its ``linear_scan`` composes C
factors per chunk in WY form and scans dense q × q chunk transitions.

The compact form is read off the linearised step by ``autopar.passes.matrix_state``
(the h-independent part of the jaxpr computes d, U, V); no dense J is formed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .structure import Dense, Diagonal, Identity, Scalar, Structure

__all__ = ["LowRank", "Householder", "Kronecker", "kronecker_from_factors"]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class LowRank(Structure):
    """M = diag(d) + U Vᵀ (q × q) of rank r: products of Householder-like factors (I − β k kᵀ),
    DPLR (RWKV-7). ``dkind``: the diagonal part is "zero", "identity", "scalar" (d: (1,)) or
    "diagonal" (d: (q,)). Compact form ``(d, U, V)``."""

    rank: int = 1
    dkind: str = "identity"

    kind: ClassVar[str] = "householder"
    order: ClassVar[int] = 5
    n_jvps = 1

    def describe(self) -> str:
        return f"householder (diag: {self.dkind}, rank {self.rank})"

    def pattern(self):
        return np.ones((self.size, self.size), bool)

    def matvec(self, a, v):
        d, U, V = a
        return d * v + jnp.matmul(U, jnp.matmul(v, V, precision=_HI), precision=_HI)

    def transpose(self, a):
        d, U, V = a
        return (d, V, U)

    def diagonal(self, a):
        d, U, V = a
        return jnp.broadcast_to(d, (self.size,)) + jnp.sum(U * V, -1)

    def to_dense(self, a):
        d, U, V = a
        return jnp.diag(jnp.broadcast_to(d, (self.size,))) + jnp.matmul(U, V.T, precision=_HI)

    def compose(self, a2, a1):
        raise NotImplementedError(
            "the product of two low-rank factors has a larger rank; Kronecker.linear_scan composes them in "
            "chunks (autopar.solvers.chunked) instead of pairwise."
        )

    def compose_flops(self):
        return 2.0 * self.size**2 * self.rank  # amortised chunked cost per step (see Kronecker)

    def matvec_flops(self):
        return 4.0 * self.size * self.rank + self.size

    def floats(self):
        return float(2 * self.size * self.rank + (self.size if self.dkind == "diagonal" else 1))


Householder = LowRank


@dataclasses.dataclass(frozen=True)
class Kronecker(Structure):
    """J = I ⊗ M per head: a matrix state leaf acted on from one side (see the module docstring)."""

    side: str = "right"  # "left": S ↦ M S; "right": S ↦ S Mᵀ
    p: int = 1  # vectors acted on (the passive axis)
    q: int = 1  # factor size (the acted axis)
    inner: Structure = None  # type: ignore[assignment]
    heads: int = 1
    leaf_shape: tuple = ()
    chunk: int = 0  # chunk length of the WY scan (0: automatic)

    order: ClassVar[int] = 5

    def __post_init__(self):
        if self.side not in ("left", "right"):
            raise ValueError(f"Kronecker `side` must be 'left' or 'right'; got {self.side!r}.")
        if self.heads * self.p * self.q != self.size:
            raise ValueError(
                f"Kronecker sizes disagree: heads*p*q = {self.heads}*{self.p}*{self.q} != size {self.size}."
            )
        if not self.leaf_shape:
            m, n = (self.p, self.q) if self.side == "right" else (self.q, self.p)
            object.__setattr__(self, "leaf_shape", (self.heads, m, n))

    # ---- description -------------------------------------------------------------
    @property
    def inner_kind(self) -> str:
        return self.inner.kind

    @property
    def rank(self) -> int:
        return getattr(self.inner, "rank", 0)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"kronecker({self.inner.kind})"

    def describe(self) -> str:
        extra = f", rank={self.rank}, diag={self.inner.dkind}" if isinstance(self.inner, LowRank) else ""
        heads = f", heads={self.heads}" if self.heads > 1 else ""
        return f"kronecker({self.inner.kind}, {self.side}, q={self.q}, p={self.p}{extra}{heads})"

    @property
    def n_jvps(self) -> int:
        return 1

    def pattern(self):
        blk = np.kron(np.ones((self.q, self.q), bool) if not isinstance(self.inner, (Identity, Scalar, Diagonal))
                      else np.eye(self.q, dtype=bool), np.eye(self.p, dtype=bool))
        # blk is in (a, i) order = left layout; permute for the right layout
        if self.side == "right":
            perm = np.arange(self.p * self.q).reshape(self.q, self.p).T.ravel()
            blk = blk[np.ix_(perm, perm)]
        return np.kron(np.eye(self.heads, dtype=bool), blk)

    # ---- layout --------------------------------------------------------------------
    def _canon(self, v):
        m, n = (self.p, self.q) if self.side == "right" else (self.q, self.p)
        X = v.reshape(self.heads, m, n)
        return X if self.side == "right" else jnp.swapaxes(X, -1, -2)

    def _uncanon(self, X):
        if self.side == "left":
            X = jnp.swapaxes(X, -1, -2)
        return X.reshape(self.size)

    # ---- algebra -------------------------------------------------------------------
    def extract(self, jvp, dtype):
        from autopar.passes.matrix_state import extract_factors

        f = extract_factors(jvp, self.size, self.leaf_shape, self.side, dtype)
        H, q = self.heads, self.q
        ones = jnp.ones((H, q), dtype)
        d = ones if f.dkind == "identity" else (jnp.zeros((H, q), dtype) if f.d is None else f.d.astype(dtype))
        inner = self.inner
        if isinstance(inner, Identity):
            return ()
        if isinstance(inner, Scalar):
            return d[:, 0]
        if isinstance(inner, Diagonal):
            return d
        if f.rank != self.rank and isinstance(inner, LowRank):
            raise RuntimeError(f"matrix_state: run-time rank {f.rank} differs from the proven rank {self.rank}")
        U = f.U.astype(dtype) if f.U is not None else jnp.zeros((H, q, 0), dtype)
        V = f.V.astype(dtype) if f.V is not None else jnp.zeros((H, q, 0), dtype)
        if isinstance(inner, LowRank):
            dd = d if inner.dkind == "diagonal" else d[:, :1]
            return (dd, U, V)
        # dense inner factor
        return jax.vmap(jnp.diag)(d) + jnp.einsum("hqr,hsr->hqs", U, V, precision=_HI)

    def _per_head(self, fn, *args):
        return jax.vmap(fn)(*args)

    def compose(self, a2, a1):
        if isinstance(self.inner, Identity):
            return ()
        return jax.vmap(self.inner.compose)(a2, a1)

    def matvec(self, a, v):
        if isinstance(self.inner, Identity):
            return v
        X = self._canon(v)
        rows = jax.vmap(jax.vmap(self.inner.matvec, in_axes=(None, 0)))
        return self._uncanon(rows(a, X))

    def transpose(self, a):
        if isinstance(self.inner, Identity):
            return ()
        return jax.vmap(self.inner.transpose)(a)

    def diagonal(self, a):
        if isinstance(self.inner, Identity):
            diag = jnp.ones((self.heads, self.q))
        else:
            diag = jax.vmap(self.inner.diagonal)(a)  # (H, q)
        X = jnp.broadcast_to(diag[:, None, :], (self.heads, self.p, self.q))
        return self._uncanon(X)

    # ---- the scan (hook used by autopar.solvers.linear.linear_scan) -----------------
    custom_scan: ClassVar[bool] = True

    def chunk_size(self, T: int) -> int:
        from autopar.solvers.chunked import default_chunk

        if self.chunk:
            return int(max(1, min(self.chunk, max(T, 1))))
        return default_chunk(T, self.q, max(self.rank, 1), getattr(self.inner, "dkind", "") == "diagonal")

    def linear_scan(self, a, b, v0):
        """v_t = J_t v_{t−1} + b_t for t = 1..T (forward; ``linear_scan`` handles ``reverse``)."""
        T = b.shape[0]
        if isinstance(self.inner, Identity):
            return jnp.cumsum(b.at[0].add(v0), axis=0)
        if isinstance(self.inner, LowRank):
            from autopar.solvers.chunked import chunked_dplr_scan

            d, U, V = a
            X = jax.vmap(self._canon)(b)  # (T, H, p, q)
            out = chunked_dplr_scan(d, U, V, X, self._canon(v0), self.chunk_size(T))
            return jax.vmap(self._uncanon)(out)
        first = jax.tree_util.tree_map(lambda x: x[0], a)
        b = b.at[0].add(self.matvec(first, v0))
        compose, matvec = jax.vmap(self.compose), jax.vmap(self.matvec)

        def combine(e1, e2):
            a1, b1 = e1
            a2, b2 = e2
            return compose(a2, a1), matvec(a2, b1) + b2

        return jax.lax.associative_scan(combine, (a, b))[1]

    # ---- costs (per step; the low-rank kind's compose is the chunked scan, amortised) -
    def compose_flops(self):
        H, p, q = self.heads, self.p, self.q
        if isinstance(self.inner, LowRank):
            C, r = self.chunk_size(4096), max(self.rank, 1)
            return float(H * (2 * C * q * r * r + 4 * (p + q) * q * r + 2 * (p + q) * q * q / C))
        return float(H * self.inner.compose_flops())

    def matvec_flops(self):
        return float(self.heads * self.p * self.inner.matvec_flops())

    def floats(self):
        if isinstance(self.inner, Identity):
            return 0.0
        return float(self.heads * self.inner.floats())


def kronecker_from_factors(size: int, leaf_shape: tuple, side: str, factors) -> Kronecker:
    """The Kronecker structure for proven inner factors (see ``passes.matrix_state.Factors``)."""
    nb = len(leaf_shape) - 2
    H = int(np.prod(leaf_shape[:nb], dtype=np.int64)) if nb else 1
    m, n = leaf_shape[nb:]
    q, p = (n, m) if side == "right" else (m, n)
    r, dk = factors.rank, factors.dkind
    if r == 0:
        inner = {"identity": Identity, "scalar": Scalar, "diagonal": Diagonal}.get(dk, Scalar)(q)
    elif r < q:
        inner = LowRank(q, r, dk)
    else:
        inner = Dense(q)
    return Kronecker(size, side, p, q, inner, H, tuple(leaf_shape))
