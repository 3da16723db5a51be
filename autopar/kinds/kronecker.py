r"""J = I ⊗ M per head: a matrix-valued state acted on from one side, M in its own kind.

**Layout.** A state leaf S of shape (*B, m, n) is raveled row-major into v (see
``autopar.trace.LeafInfo``). Heads B are flattened to H. A *left* action S_b ↦ M_b S_b has
J = blkdiag_b(M_b ⊗ I_n); a *right* action S_b ↦ S_b A_b has J = blkdiag_b(I_m ⊗ A_bᵀ). Both
are one canonical form: the p vectors x_i ∈ R^q that M acts on are the rows of X (H, p, q) —

    right:  q = n, p = m, X = S,       x_i ↦ M x_i  (M = Aᵀ)
    left:   q = m, p = n, X = Sᵀ,      x_i ↦ M x_i

so J·v = canon⁻¹(X Mᵀ), and Jᵀ is the same with Mᵀ (the side is unchanged).

=====================  ==================  =========================================
inner kind             compact (per head)  compose / scan
=====================  ==================  =========================================
identity               ()                  cumsum, O(T·p·q)
scalar                 α: (H,)             α2·α1, O(T·p·q)
diagonal               d: (H, q)           d2⊙d1, O(T·p·q)
householder (DPLR)     (d, U, V)           chunked WY/UT scan (kinds/dplr_scan.py)
dense                  M: (H, q, q)        M2·M1, O(q³) per combine
=====================  ==================  =========================================

Every operation is the inner kind's, per head (the p rows share M): ``scan`` runs the inner
kind's scan with the rows as shared right-hand sides.

**Extraction.** For a diagonal inner factor (identity, scalar, diagonal) one JVP with a vector
of ones reads d in every row. Otherwise ``autopar.passes.matrix_state``, which proves the
one-sided action, attaches ``reader``: the run-time reader of (d, U, V) off the linearised step
(its h-independent slice computes them; no dense J is formed; a low-rank U Vᵀ cannot be read
off JVPs). The inner kind turns (d, U, V) into its compact form (``from_dplr``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .base import Structure
from .dense import Dense
from .diagonal import Diagonal
from .fixed import Identity
from .lowrank import LowRank
from .scalar import Scalar

__all__ = ["Kronecker", "kronecker_from_factors"]


@dataclasses.dataclass(frozen=True)
class Kronecker(Structure):
    """J = I ⊗ M per head: a matrix state leaf acted on from one side (see the module docstring)."""

    side: str = "right"  # "left": S ↦ M S; "right": S ↦ S Mᵀ
    p: int = 1  # vectors acted on (the passive axis)
    q: int = 1  # factor size (the acted axis)
    inner: Structure = None  # type: ignore[assignment]
    heads: int = 1
    leaf_shape: tuple = ()
    chunk: int = 0  # chunk length of a low-rank inner factor's WY scan (0: automatic)
    #: ``reader(jvp, dtype) -> Factors`` (dkind, d, U, V, rank), attached by the analysis.
    reader: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    order: ClassVar[int] = 6

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
        if self.chunk and "chunk" in {f.name for f in dataclasses.fields(self.inner)}:
            object.__setattr__(self, "inner", dataclasses.replace(self.inner, chunk=self.chunk))

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

    @property
    def is_diagonal(self) -> bool:  # type: ignore[override]
        return self.inner.is_diagonal  # I ⊗ diag(d) is diagonal

    def describe(self) -> str:
        extra = f", rank={self.rank}, diag={self.inner.dkind}" if self.rank else ""
        heads = f", heads={self.heads}" if self.heads > 1 else ""
        return f"kronecker({self.inner.kind}, {self.side}, q={self.q}, p={self.p}{extra}{heads})"

    @property
    def n_jvps(self) -> int:
        return 1

    def pattern(self):
        blk = np.kron(self.inner.pattern(), np.eye(self.p, dtype=bool))
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

    def _heads(self, fn, *trees):
        """``fn`` per head; a fixed inner factor (identity: no arrays) is the same for all."""
        if not jax.tree_util.tree_leaves(trees):
            return fn(*trees)
        return jax.vmap(fn)(*trees)

    # ---- algebra -------------------------------------------------------------------
    def extract(self, jvp, dtype):
        H, q = self.heads, self.q
        none = jnp.zeros((H, q, 0), dtype)
        if self.inner.is_diagonal:  # M = diag(d): every row of J·1 reads d (one JVP, no reader)
            return self.inner.from_dplr(self._canon(jvp(jnp.ones((self.size,), dtype)))[:, 0, :], none, none)
        if self.reader is None:
            raise ValueError("this Kronecker structure has no factor reader (autopar.passes.matrix_state attaches one)")
        f = self.reader(jvp, dtype)
        if f.dkind == "identity":
            d = jnp.ones((H, q), dtype)
        else:
            d = jnp.zeros((H, q), dtype) if f.d is None else f.d.astype(dtype)
        U = f.U.astype(dtype) if f.U is not None else none
        V = f.V.astype(dtype) if f.V is not None else none
        return self.inner.from_dplr(d, U, V)

    def compose(self, a2, a1):
        return self._heads(self.inner.compose, a2, a1)

    def matvec(self, a, v):
        rows = jax.vmap(jax.vmap(self.inner.matvec, in_axes=(None, 0)))
        return self._uncanon(rows(a, self._canon(v)))

    def transpose(self, a):
        return self._heads(self.inner.transpose, a)

    def diagonal(self, a):
        diag = jnp.broadcast_to(self._heads(self.inner.diagonal, a), (self.heads, self.q))
        return self._uncanon(jnp.broadcast_to(diag[:, None, :], (self.heads, self.p, self.q)))

    def scan(self, a, b, v0):
        """v_t = J_t v_{t−1} + b_t: per head, the inner kind's scan over the p rows (sharing M)."""
        X, X0 = jax.vmap(self._canon)(b), self._canon(v0)  # (T, H, p, q), (H, p, q)
        if jax.tree_util.tree_leaves(a):
            out = jax.vmap(self.inner.scan, in_axes=(1, 1, 0), out_axes=1)(a, X, X0)
        else:
            out = self.inner.scan(a, X, X0)  # fixed inner factor: heads are just more rows
        return jax.vmap(self._uncanon)(out)

    # ---- costs (per step) -------------------------------------------------------------
    def compose_flops(self, rows=1):
        return float(self.heads * self.inner.compose_flops(rows=self.p))

    def matvec_flops(self):
        return float(self.heads * self.p * self.inner.matvec_flops())

    def scan_overhead(self, rows=1):
        return float(self.heads * self.inner.scan_overhead(rows=self.p))

    def floats(self):
        return float(self.heads * self.inner.floats())


def kronecker_from_factors(size: int, leaf_shape: tuple, side: str, factors, reader: Callable | None = None) -> Kronecker:
    """The Kronecker structure for proven inner factors (see ``passes.matrix_state.Factors``)."""
    nb = len(leaf_shape) - 2
    H = int(np.prod(leaf_shape[:nb], dtype=np.int64)) if nb else 1
    m, n = leaf_shape[nb:]
    q, p = (n, m) if side == "right" else (m, n)
    r, dk = factors.rank, factors.dkind
    inner: Any
    if r == 0:
        inner = {"identity": Identity, "scalar": Scalar, "diagonal": Diagonal}.get(dk, Scalar)(q)
    elif r < q:
        inner = LowRank(q, r, dk)
    else:
        inner = Dense(q)
    return Kronecker(size, side, p, q, inner, H, tuple(leaf_shape), reader=reader)
