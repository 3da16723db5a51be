r"""The Structure protocol: what a kind of J = ∂f/∂h (D × D) must provide, and the kind registry.

A ``Structure`` is the *shape* of every per-step Jacobian J_t, proven by the analysis for all
h and x; it owns the algebra of its compact form ``a`` (one time step; solvers vmap over time).
Solvers, the adjoint and the planner use only these methods and predicates — never a kind's
name — so a new kind is one module plus one ``register_kind`` line (docs/structures.md).

What each method must satisfy (J = ``to_dense(a)``; tests/test_kind_monomial.py checks them):

* ``extract(jvp, dtype)`` — ``to_dense(extract(jvp)) == J`` for the linear map ``jvp = J·``,
  using ``n_jvps`` products (compressed extraction);
* ``matvec(a, v) == J v``; ``compose(a2, a1)`` is the compact form of J2 J1 (apply J1 first),
  so ``matvec(compose(a2, a1), v) == matvec(a2, matvec(a1, v))`` and compose is associative;
* ``transpose(a)`` is the compact form of Jᵀ; ``diagonal(a) == diag(J)``;
* ``abs_matvec(a, x) ≥ |J| x`` elementwise for x ≥ 0;
* ``scan(a, b, v0)`` solves v_t = J_t v_{t−1} + b_t (t = 1..T) — by default the associative scan
  over pairs (J_t, b_t), (J2, b2)∘(J1, b1) = (J2 J1, J2 b1 + b2) built from compose / matvec;
* ``block_view()`` — J as m independent b × b blocks of a permuted state (the Kalman
  smoother's layout); by default one dense block;
* costs per step: ``compose_flops``, ``matvec_flops``, ``floats`` (stored per step),
  ``scan_elements`` (floats moved per combine beyond the factor and the vector) and
  ``scan_overhead`` (a scan's per-step work beyond its flops, in floats at ``scan_elem_time``);
* predicates: ``is_diagonal`` (J equals its diagonal: diagonal-only solvers are exact) and
  ``cheap_diagonal`` (diag(J) is best read through ``extract``, not a diagonal interpreter).

``recognise(pattern, facts)`` (a classmethod) returns the kind's structure when the proven
sparsity pattern (and the value-level ``facts``: ``coefficients``, ``reads_h``) admits it, else
None. ``recognise`` below tries the registered kinds tightest first (by ``order``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from autopar.registry import Registry

__all__ = ["Structure", "BlockView", "JVP", "register_kind", "unregister_kind", "registered_kinds", "recognise", "HI", "matmul"]

HI = jax.lax.Precision.HIGHEST

#: Contractions this short are unrolled by ``matmul``.
UNROLL_CONTRACTION = 16


def matmul(a, b):
    """``a @ b`` over leading batch axes at full precision (``HI``: no TF32), the combine of the
    dense and block kinds.

    A contraction of length k ≤ ``UNROLL_CONTRACTION`` is written as the sum of k outer products
    Σ_j a[..., :, j] b[..., j, :], one elementwise fusion, instead of a batched dot: XLA:CPU runs
    batched 4×4 … 7×7 dots 10–30× slower than that sum (2-core AMD EPYC, 4096 products of 4×4:
    666 ns each as a dot, 22 ns as the sum; 16×16: 313 vs 113 ns), and no backend loses by it
    at these sizes. Results agree with the dot to rounding."""
    k = a.shape[-1]
    if k > UNROLL_CONTRACTION or b.ndim < 2 or a.ndim < 2:
        return jnp.matmul(a, b, precision=HI)
    acc = a[..., :, 0, None] * b[..., None, 0, :]
    for j in range(1, k):
        acc = acc + a[..., :, j, None] * b[..., None, j, :]
    return acc

JVP = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class BlockView:
    """J as ``m`` independent ``b × b`` blocks: ``vec`` (D,) → (m, b, 1), ``unvec`` its inverse,
    ``mat`` one step's compact form → (m, b, b). ``diag``: the blocks are 1 × 1 (elementwise)."""

    m: int
    b: int
    vec: Callable
    unvec: Callable
    mat: Callable
    diag: bool = False


@dataclasses.dataclass(frozen=True)
class Structure:
    """Base class: the shape of J (D × D) and the algebra of its compact form."""

    size: int  # D

    kind: ClassVar[str] = "?"
    #: Position in the lattice, tightest first (orders the recognisers and the candidates).
    order: ClassVar[int] = 100
    #: J equals its own diagonal (zero, identity, scalar, diagonal): diag(J)-only solvers are exact.
    is_diagonal: ClassVar[bool] = False

    @property
    def cheap_diagonal(self) -> bool:
        """diag(J) is best read as ``diagonal(extract(jvp))``: a few JVPs, no dense J formed."""
        return self.is_diagonal

    # ---- recognition -------------------------------------------------------------
    @classmethod
    def recognise(cls, pattern: np.ndarray, facts: dict) -> "Structure | None":
        """This kind for the proven ``pattern`` (D × D bool) and ``facts``, or None."""
        return None

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
        """Materialise J (tests, reports and the dense block view only)."""
        leaves = [x for x in jax.tree_util.tree_leaves(a) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
        eye = jnp.eye(self.size, dtype=jnp.result_type(*leaves) if leaves else jnp.float32)
        return jax.vmap(lambda e: self.matvec(a, e), out_axes=1)(eye)

    # ---- the linear recurrence and the smoother's layout ---------------------------
    def scan(self, a: Any, b: jax.Array, v0: jax.Array) -> jax.Array:
        """All v_t of v_t = J_t v_{t−1} + b_t, t = 1..T (a: leading axis T).

        ``b`` is (T, *R, D) and ``v0`` (*R, D): R optional row axes that share J (a Kronecker
        state's rows). Default: fold v0 into b_1, then one associative scan over (J_t, b_t).
        """
        matvec = self.matvec
        for _ in range(b.ndim - 2):
            matvec = jax.vmap(matvec, in_axes=(None, 0))
        first = jax.tree_util.tree_map(lambda x: x[0], a)
        b = b.at[0].add(matvec(first, v0))
        compose, matvec_t = jax.vmap(self.compose), jax.vmap(matvec)

        def combine(e1, e2):  # e1 earlier, e2 later
            a1, b1 = e1
            a2, b2 = e2
            return compose(a2, a1), matvec_t(a2, b1) + b2

        return jax.lax.associative_scan(combine, (a, b))[1]

    def block_view(self) -> BlockView:
        """The Kalman smoother's layout; by default one dense D × D block (``to_dense``)."""
        D = self.size
        return BlockView(1, D, lambda v: v.reshape(1, D, 1), lambda x: x[..., 0].reshape(D),
                         lambda a: self.to_dense(a).reshape(1, D, D))

    # ---- cost model (per step, in flops and stored floats) -----------------------
    def compose_flops(self, rows: int = 1) -> float:
        """Flops of one combine (``rows``: vectors sharing J, for kinds whose scan is chunked)."""
        raise NotImplementedError

    def matvec_flops(self) -> float:
        raise NotImplementedError

    def floats(self) -> float:
        """Floats stored per step for the compact form."""
        raise NotImplementedError

    def scan_elements(self) -> float:
        """Floats each combine moves beyond the factor and the vector (gathers, scatters)."""
        return 0.0

    def scan_overhead(self, rows: int = 1) -> float:
        """Per-step cost of ``scan`` beyond its flops and its stored floats, as floats priced at
        ``scan_elem_time`` (without the cache-miss term: work that stays compute-bound at any T),
        for kinds whose ``scan`` is not the pairwise associative scan; ``rows`` as in compose_flops."""
        return 0.0

    # ---- reading a matrix state's inner factor (Kronecker) ------------------------
    def from_dplr(self, d: jax.Array, U: jax.Array, V: jax.Array) -> Any:
        """Compact form of M = diag(d) + U Vᵀ, known to lie in this kind; leading head axis H
        (d: (H, q), U, V: (H, q, r)). Needed only for kinds used inside ``Kronecker``."""
        raise NotImplementedError(f"the {self.kind} kind cannot be a Kronecker inner factor")


_KINDS = Registry("structure kind")


def register_kind(cls: type, *, override: bool = False) -> type:
    """Add a kind to the registry (usable as a class decorator). Its ``recognise`` is tried in
    ``order`` (tightest first); duplicate names are rejected unless ``override=True``."""
    if not (isinstance(cls, type) and issubclass(cls, Structure)):
        raise TypeError(f"register_kind() takes a Structure subclass; got {cls!r}.")
    name = cls.kind if isinstance(cls.kind, str) else cls.__name__.lower()
    _KINDS.add(name, cls, override=override)
    return cls


def unregister_kind(name: str) -> None:
    _KINDS.remove(name)


def registered_kinds() -> list[type]:
    """The registered kinds, tightest first."""
    return sorted(_KINDS.values(), key=lambda c: c.order)


def recognise(pattern: np.ndarray, facts: dict | None = None) -> Structure:
    """The tightest registered kind that admits ``pattern`` (and ``facts``)."""
    P = np.asarray(pattern, bool)
    facts = {} if facts is None else facts
    for cls in registered_kinds():
        st = cls.recognise(P, facts)
        if st is not None:
            return st
    raise LookupError("no registered kind admits this pattern (the dense kind admits every pattern)")
