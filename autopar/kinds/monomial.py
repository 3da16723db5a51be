r"""J = P·diag(a), a generalised permutation: at most one nonzero per row and per column.

``jnp.roll``, index shuffles ``h[perm]`` and head permutations produce it. Compact form per
step: (a, σ) with a ∈ R^D and σ an int32 bijection of 0..D−1, meaning

    J v = a ⊙ v[σ],        i.e.  J[i, σ_i] = a_i  (every other entry 0).

**Compose** (apply J1 first), O(D):

    J2 J1 v = a2 ⊙ (a1 ⊙ v[σ1])[σ2] = (a2 ⊙ a1[σ2]) ⊙ v[σ1[σ2]],   so  (a2, σ2)∘(a1, σ1) = (a2 ⊙ a1[σ2], σ1[σ2]).

**Transpose**: (Jᵀ w)_j = Σ_i J[i, j] w_i = a_{σ⁻¹_j} w_{σ⁻¹_j}, so Jᵀ = (a[σ⁻¹], σ⁻¹).
**Diagonal**: a_i where σ_i = i, else 0.

**Extraction**: one JVP. The pattern's columns have disjoint row sets, so J·1 = a (row i holds
its one entry). σ is static — read off the proven pattern; the composed permutations of the scan
are data. A *partial* permutation (rows with no nonzero: the state element is reset) is completed
to a bijection by sending those rows to the unused columns; there J·1 reads a_i = 0.

**Smoother layout**: the cycles of σ are J's blocks (``block_view``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .base import Structure
from .block import index_view

__all__ = ["Monomial", "permutation_of"]


def permutation_of(pattern: np.ndarray) -> np.ndarray | None:
    """σ with J[i, σ_i] the only possible nonzero of row i (completed to a bijection), or None
    when a row or a column of ``pattern`` holds more than one nonzero."""
    P = np.asarray(pattern, bool)
    if P.size and (P.sum(axis=1).max() > 1 or P.sum(axis=0).max() > 1):
        return None
    D = P.shape[0]
    sigma = np.full(D, -1, np.int64)
    rows, cols = np.nonzero(P)
    sigma[rows] = cols
    free_rows = np.flatnonzero(sigma < 0)
    used = np.zeros(D, bool)
    used[cols] = True
    sigma[free_rows] = np.flatnonzero(~used)  # as many unused columns as empty rows
    return sigma


def _cycles(sigma: np.ndarray) -> np.ndarray:
    """The cycles of σ as a padded (m, b) index array (pad: D), ordered by first element."""
    D = len(sigma)
    seen = np.zeros(D, bool)
    cycles = []
    for i in range(D):
        if seen[i]:
            continue
        c, j = [], i
        while not seen[j]:
            seen[j] = True
            c.append(j)
            j = int(sigma[j])
        cycles.append(sorted(c))
    index = np.full((len(cycles), max((len(c) for c in cycles), default=0)), D, np.int64)
    for k, c in enumerate(cycles):
        index[k, : len(c)] = c
    return index


@dataclasses.dataclass(frozen=True, eq=False)
class Monomial(Structure):
    """J v = a ⊙ v[σ] (see the module docstring); ``perm`` is σ, proven from the pattern."""

    perm: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))

    kind: ClassVar[str] = "monomial"
    order: ClassVar[int] = 4
    n_jvps = 1
    cheap_diagonal: ClassVar[bool] = True

    @classmethod
    def recognise(cls, pattern, facts):
        sigma = permutation_of(pattern)
        return None if sigma is None else cls(pattern.shape[0], sigma)

    def __eq__(self, other):
        return type(other) is Monomial and self.size == other.size and np.array_equal(self.perm, other.perm)

    def __hash__(self):
        return hash((self.size, self.perm.tobytes()))

    def describe(self) -> str:
        fixed = int(np.sum(self.perm == np.arange(self.size)))
        cyc = _cycles(self.perm)
        moved = [int(np.sum(r < self.size)) for r in cyc if np.sum(r < self.size) > 1]
        return f"monomial (permutation: {len(moved)} cycle{'s' if len(moved) != 1 else ''} of length " \
               f"{'/'.join(map(str, sorted(set(moved)))) or '-'}, {fixed} fixed)"

    def pattern(self):
        P = np.zeros((self.size, self.size), bool)
        P[np.arange(self.size), self.perm] = True
        return P

    # ---- algebra: a = (values (D,), σ (D,) int32) ---------------------------------------
    def extract(self, jvp, dtype):
        return jvp(jnp.ones((self.size,), dtype)), jnp.asarray(self.perm, jnp.int32)

    def compose(self, a2, a1):
        (v2, s2), (v1, s1) = a2, a1
        return v2 * v1[s2], s1[s2]

    def matvec(self, a, v):
        vals, s = a
        return vals * v[s]

    def abs_matvec(self, a, x):
        vals, s = a
        return jnp.abs(vals) * x[s]

    def transpose(self, a):
        vals, s = a
        inv = jnp.zeros_like(s).at[s].set(jnp.arange(self.size, dtype=s.dtype))
        return vals[inv], inv

    def diagonal(self, a):
        vals, s = a
        return jnp.where(s == jnp.arange(self.size, dtype=s.dtype), vals, jnp.zeros_like(vals))

    def to_dense(self, a):
        vals, s = a
        return jnp.zeros((self.size, self.size), vals.dtype).at[jnp.arange(self.size), s].set(vals)

    def block_view(self):
        index = _cycles(self.perm)  # J[i, σ_i] stays inside i's cycle
        ix = jnp.asarray(index)

        def mat(a):  # B[k, i, p] = J[index[k, i], index[k, p]]
            vals, s = a
            ext_v = jnp.concatenate([vals, jnp.zeros((1,), vals.dtype)])
            ext_s = jnp.concatenate([s, jnp.full((1,), -1, s.dtype)])
            hit = ext_s[ix][:, :, None] == ix[:, None, :]
            return jnp.where(hit, ext_v[ix][:, :, None], jnp.zeros((), vals.dtype))

        return index_view(index, self.size, mat)

    # ---- costs ----------------------------------------------------------------------------
    def compose_flops(self, rows=1):
        return float(self.size)

    def matvec_flops(self):
        return float(self.size)

    def floats(self):
        return 2.0 * float(self.size)  # a and σ

    def scan_elements(self):
        return 2.0 * self.size  # each combine gathers a1 and b1 through σ2
