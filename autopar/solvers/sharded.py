r"""Time-sharded (sequence-parallel) solves: the two-level form over a mesh axis.

The global sequence t = 1..T is split into P equal chunks, one per shard of the mesh axis
``axis_name`` (shard k holds steps kL+1..(k+1)L, L = T/P; with ``reverse`` the recurrence runs
from the last shard to the first). Everything here runs *inside* ``jax.shard_map`` and talks
to the other shards only through JAX collectives (``all_gather``, ``ppermute``, ``pmax``).

**Two-level linear solve.** For v_t = A_t v_{t−1} + b_t each shard k

1. reduces its chunk to one affine map, the pair (Φ_k, β_k) with
   Φ_k = A_{kL+L} ⋯ A_{kL+1} and β_k = the chunk's state from a zero start, by a tree
   reduction of (A₂, b₂) ∘ (A₁, b₁) = (A₂A₁, A₂b₁ + b₂) with the kind's own ``compose`` and
   ``matvec`` — Φ stays in the proven compact structure (diagonal, blocks, monomial,
   Kronecker, dense, …). Kinds without a closed ``compose`` (low-rank / WY: the rank grows)
   summarise Φ densely per head (``summary``), O(q²) per head;
2. all-gathers the P summaries — P·(size of one compact transition + D) numbers, independent
   of T — and folds them in shard order, h_{k} = Φ_{k−1} h_{k−1} + β_{k−1} from h_0 = v0
   (O(P) matvecs; every shard folds all P, which costs less than a second collective);
3. runs the kind's own ``scan`` on its chunk from its true initial state h_k (the local fix-up).

The same routine serves each Newton iteration (deer, quasi-deer: their step is a linear
recurrence) and the adjoint (a reverse linear recurrence: the shard order reversed).
Crossing a chunk boundary otherwise needs only the previous shard's last state (``shift``, one
``ppermute`` of D numbers) and, for the adjoint, the next shard's first Jacobian.

**Pipeline.** A recurrence with no parallel form (the sequential solver, integer state read
by floats, a fallback) runs as a pipeline: P rounds, in each of which every shard runs its
chunk from its current start and hands its final state to its successor; after round k the
first k + 1 shards hold their true starts. Correct, P times the work of one chunk per round:
it is exact, not fast.

The residual and every stop decision are global (``pmax``), so all shards run the same
number of iterations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from autopar import _compat, hoist
from autopar.structure import Dense, Diagonal, Structure
from autopar.kinds import Kronecker, LowRank

from . import convergence as cv
from . import newton
from .base import Problem, Stats
from .linear import RESIDUAL_CHUNK_FLOATS, linearize_steps, proven_residual
from .result import Result
from .sequential import sequential_trajectory

__all__ = ["Axis", "summary", "sharded_linear_scan", "sharded_associative_scan", "sharded_kalman_step", "pipeline",
           "run_chain", "sequential_solve", "elk_stage", "composes", "vary", "SHARDED_SOLVERS", "CHAINS", "ShardPlan"]

#: The sharded fallback chains, as on one device (``Solver.chain()``).
CHAINS = {"deer": ("deer", "elk", "sequential"), "quasi-deer": ("quasi-deer", "quasi-elk", "sequential"),
          "elk": ("elk", "sequential"), "quasi-elk": ("quasi-elk", "sequential")}

#: Solvers with a time-sharded form (a user-registered solver has none: the planner declines it).
SHARDED_SOLVERS = ("sequential", "linear", "deer", "quasi-deer", "elk", "quasi-elk")


def vary(x, axis_name):
    """``x`` typed as varying over ``axis_name`` (shard_map's check_vma types); a no-op when it is."""
    def one(a):
        return a if axis_name in _compat.varying_axes(a) else jax.lax.pcast(a, axis_name, to="varying")

    return jax.tree_util.tree_map(one, x)


@dataclasses.dataclass(frozen=True)
class Axis:
    """The mesh axis a solve is sharded over: its name, size P, and the recurrence's direction
    (``reverse``: shard P−1 holds the first steps of the recurrence)."""

    name: str
    size: int
    reverse: bool = False

    def index(self):
        """This shard's device index along the axis."""
        return jax.lax.axis_index(self.name)

    def position(self):
        """This shard's position in the recurrence's order (0 = holds step 1)."""
        i = self.index()
        return (self.size - 1 - i) if self.reverse else i

    def is_first(self):
        return self.position() == 0

    def is_last(self):
        return self.position() == self.size - 1

    def from_previous(self, x):
        """The previous shard's (recurrence order) ``x``; zeros on the first shard."""
        if self.size == 1:
            return jax.tree_util.tree_map(jnp.zeros_like, x)
        P = self.size
        perm = [(i + 1, i) for i in range(P - 1)] if self.reverse else [(i, i + 1) for i in range(P - 1)]
        return jax.lax.ppermute(vary(x, self.name), self.name, perm)

    def from_next(self, x):
        """The next shard's (recurrence order) ``x``; zeros on the last shard."""
        if self.size == 1:
            return jax.tree_util.tree_map(jnp.zeros_like, x)
        P = self.size
        perm = [(i, i + 1) for i in range(P - 1)] if self.reverse else [(i + 1, i) for i in range(P - 1)]
        return jax.lax.ppermute(vary(x, self.name), self.name, perm)

    def shift(self, v0, vs):
        """(v_0..v_{L−1}) of this chunk: its own states shifted by one, the first entry the previous
        shard's last state (v0 on the first shard). One ppermute of D numbers."""
        boundary = jnp.where(self.is_first(), v0, self.from_previous(vs[-1]))
        return jnp.concatenate([boundary[None].astype(vs.dtype), vs[:-1]], axis=0)

    def pmax(self, x):
        """The maximum over the shards (stop decisions, residuals: never differentiated).

        Over *every* manual mesh axis, not only the time axis: all devices of the mesh then take
        the same branches and run the same iterations, so no collective is issued by some groups
        of a 2-D (batch × time) mesh and not by others (XLA:CPU's collectives rendezvous all
        devices of the program and would deadlock)."""
        names = tuple(dict.fromkeys(_compat.manual_axes() + (self.name,)))
        return jax.lax.pmax(jax.lax.stop_gradient(x), names if len(names) > 1 else names[0])

    def psum(self, x):
        return jax.tree_util.tree_map(lambda a: jax.lax.psum(vary(a, self.name), self.name), x)

    def all_gather(self, x):
        return jax.tree_util.tree_map(lambda a: jax.lax.all_gather(vary(a, self.name), self.name), x)


# ---- summaries of a chunk's transition ----------------------------------------------------
def composes(structure: Structure) -> bool:
    """Whether the kind has a closed ``compose`` (low-rank / WY factors do not: the rank grows)."""
    if isinstance(structure, Kronecker):
        return composes(structure.inner)
    return not isinstance(structure, LowRank)


def summary_structure(structure: Structure) -> Structure:
    """The structure a chunk's composed transition lives in: the kind itself when it composes;
    a low-rank factor's product is dense (per head, for a Kronecker state)."""
    if composes(structure):
        return structure
    if isinstance(structure, Kronecker):
        return Kronecker(structure.size, structure.side, structure.p, structure.q, Dense(structure.q),
                         structure.heads, structure.leaf_shape)
    return Dense(structure.size)


def _tree_reduce(combine, elems):
    """combine(e_0, combine(…)) over the leading axis by pairwise levels (log depth, L − 1 combines);
    ``combine(earlier, later)`` vectorised over the leading axis; order preserved."""
    n = jax.tree_util.tree_leaves(elems)[0].shape[0]
    while n > 1:
        m = n // 2
        even = jax.tree_util.tree_map(lambda x: x[0:2 * m:2], elems)
        odd = jax.tree_util.tree_map(lambda x: x[1:2 * m:2], elems)
        paired = combine(even, odd)
        if n % 2:
            paired = jax.tree_util.tree_map(lambda p, x: jnp.concatenate([p, x[-1:]], 0), paired, elems)
        elems, n = paired, m + n % 2
    return jax.tree_util.tree_map(lambda x: x[0], elems)


def summary(structure: Structure, a, b):
    """(summary structure, Φ, β): this chunk as one affine map v_end = Φ v_start + β.

    Kinds that compose: one tree reduction of (A, b) pairs with the kind's ``compose`` and
    ``matvec`` (L − 1 combines, no L-sized output). Low-rank / WY kinds: Φ by the kind's own
    chunked scan run on the q unit rows per head (Φ dense q × q per head) and β by its scan
    from zero.
    """
    L, D = b.shape
    sst = summary_structure(structure)
    if sst is structure:
        fixed = not jax.tree_util.tree_leaves(a)  # zero / identity: nothing to compose
        compose = structure.compose if fixed else jax.vmap(structure.compose)
        matvec = jax.vmap(structure.matvec, in_axes=(None if fixed else 0, 0))

        def combine(e1, e2):
            (a1, b1), (a2, b2) = e1, e2
            return compose(a2, a1), matvec(a2, b1) + b2

        Phi, beta = _tree_reduce(combine, (a, b))
        return sst, Phi, beta
    beta = structure.scan(a, b, jnp.zeros((D,), b.dtype))[-1]
    if isinstance(structure, Kronecker):
        H, q = structure.heads, structure.q
        eye = jnp.broadcast_to(jnp.eye(q, dtype=b.dtype), (H, q, q))
        rows = jax.vmap(structure.inner.scan, in_axes=(1, 1, 0), out_axes=1)(a, jnp.zeros((L, H, q, q), b.dtype), eye)
        return sst, jnp.swapaxes(rows[-1], -1, -2), beta  # row i of the scan is Φ e_i
    rows = jax.vmap(lambda e: structure.scan(a, jnp.zeros_like(b), e)[-1])(jnp.eye(D, dtype=b.dtype))
    return sst, rows.T, beta


def chunk_starts(sst: Structure, Phis, betas, v0, axis: Axis):
    """The true initial state of every shard from the gathered summaries (O(P) matvecs)."""

    def body(h, pb):
        Phi, beta = pb
        return sst.matvec(Phi, h) + beta, h

    _, starts = jax.lax.scan(body, vary(v0.astype(betas.dtype), axis.name), (Phis, betas), reverse=axis.reverse)
    return starts


def sharded_linear_scan(structure: Structure, a, b, v0, axis: Axis):
    """v_t = A_t v_{t−1} + b_t over the whole sharded sequence; this shard's chunk (a, b: L steps)
    in, its L states out. v0 (the state before the recurrence's first step) must be the same on
    every shard. Communication: one all-gather of P summaries (module docstring)."""
    if b.shape[0] == 0:
        return b
    sst, Phi, beta = summary(structure, a, b)
    Phis, betas = axis.all_gather((Phi, beta))
    starts = chunk_starts(sst, Phis, betas, v0, axis)
    start = starts[axis.index()]
    return structure.scan(a, b, start)


# ---- the pipeline ------------------------------------------------------------------------
def pipeline(final: Callable, full: Callable, start0, axis: Axis):
    """A sequential recurrence across shards: ``final(start) -> end state`` and ``full(start) ->
    outputs`` of this chunk. P − 1 rounds hand end states on to the next shard (after round k
    the first k + 1 shards hold their true starts), then one full run."""
    start0 = vary(start0, axis.name)
    if axis.size > 1:
        first = axis.is_first()

        def round_(_, start):
            recv = axis.from_previous(final(start))
            return jax.tree_util.tree_map(lambda s0, r: jnp.where(first, s0, r), start0, recv)

        start = jax.lax.fori_loop(0, axis.size - 1, round_, start0)
    else:
        start = start0
    return full(start)


def sequential_solve(problem: Problem, axis: Axis):
    """The sequential solver as a pipeline (``lax.scan`` per chunk), the state-independent part of
    the step computed for the chunk before its loops (``autopar.hoist``), as the unsharded one does."""
    f, xt, L = problem.f, problem.xt, problem.length
    unroll = problem.options.get("unroll", 1)
    moved = hoist.hoisted(f, problem.v0, xt)
    if moved is not None:
        f, xt = moved

    def final(v):
        return jax.lax.scan(lambda c, x: (f(c, x), None), v, xt, length=L, unroll=unroll)[0]

    def full(v):  # the unsharded loop's trajectory, its write lagged where that pays
        return sequential_trajectory(f, v, xt, L, unroll=unroll, hoisting=False, lagged="auto")

    vs = pipeline(final, full, problem.v0, axis)
    return vs, Stats(jnp.asarray(problem.length * axis.size, jnp.int32), jnp.asarray(True))


# ---- Newton ---------------------------------------------------------------------------------
def newton_iteration(problem: Problem, axis: Axis, quasi: bool) -> newton.Iteration:
    """DEER (``quasi``: quasi-DEER, diag(J)) as an ``Iteration`` for the Newton driver, each step
    one two-level linear solve; the residual is the global (pmax) per-element one."""
    from .quasi import diagonal_steps

    f, xt, v0 = problem.f, problem.xt, problem.v0
    st = Diagonal(v0.shape[0]) if quasi else problem.structure

    def linearize(prev):
        if quasi:
            return diagonal_steps(f, problem.structure, prev, xt)
        return linearize_steps(f, st, prev, xt)

    def init(V):
        prev = axis.shift(v0, V)
        fv, a = linearize(prev)
        return newton.State(V, axis.pmax(cv.stage_residual(st, a, prev, V, fv)), (fv, a))

    def step(s):
        fv, a = s.aux
        prev = axis.shift(v0, s.V)
        b = fv - jax.vmap(st.matvec)(a, prev)
        return init(sharded_linear_scan(st, a, b, v0, axis))

    return newton.Iteration(init, step, verify=verifier(problem, axis))


def verifier(problem: Problem, axis: Axis):
    """``linear.proven_verifier`` across shards: each shard's chunk by the full measure, pmax'd."""
    budget = min(RESIDUAL_CHUNK_FLOATS, problem.length * problem.v0.shape[0])
    return lambda V: axis.pmax(proven_residual(problem.f, problem.structure, axis.shift(problem.v0, V), problem.xt,
                                               V, budget))


def stage(name: str, problem: Problem, axis: Axis) -> newton.Stage:
    """The sharded chain stage ``name``: deer / quasi-deer (``newton_iteration``), elk / quasi-elk
    (``elk_stage``), or the sequential pipeline as an exact stage."""
    from .deer import DEER_MAX_ITERS, QUASI_MAX_ITERS

    if name in ("deer", "quasi-deer"):
        quasi = name == "quasi-deer"
        cap = cv.options_max_iters(dataclasses.replace(problem, length=problem.length * axis.size),
                                   QUASI_MAX_ITERS if quasi else DEER_MAX_ITERS)
        return newton.newton_stage(name, newton_iteration(problem, axis, quasi), cv.options_tol(problem), cap)
    if name in ("elk", "quasi-elk"):
        return elk_stage(problem, name == "quasi-elk", axis)

    def run(V, history, count):
        return newton.StageResult(sequential_solve(problem, axis)[0], jnp.asarray(Result.converged, jnp.int32),
                                  jnp.asarray(0, jnp.int32), history, count)

    return newton.Stage("sequential", run)


def run_chain(problem: Problem, axis: Axis, names):
    """``autopar.solvers.newton.run_chain`` across shards: each later stage runs only when every
    earlier one failed — one global decision (``Axis.pmax`` of the result code), so all shards
    take the same branch. ``fallback=False`` runs the first stage only."""
    if problem.options.get("fallback", True) is False:
        names = names[:1]
    stages = [stage(n, problem, axis) for n in names]
    V0 = vary(cv.initial_guess(problem), axis.name)
    hist = jnp.full((max(sum(s.slots for s in stages), 1),), jnp.nan, jnp.float32)
    first = stages[0].run(V0, hist, jnp.asarray(0, jnp.int32))
    code = axis.pmax(first.result)
    carry = (first.vs, code, first.iterations, first.history, first.count, jnp.asarray(0, jnp.int32))
    for k, st in enumerate(stages[1:], start=1):
        def run_next(c, st=st, k=k):
            vs, _, its, h, cnt, _ = c
            finite = axis.pmax((~cv.finite(vs)).astype(jnp.int32)) == 0
            r = st.run(jnp.where(finite, vs, V0), h, cnt)
            return (r.vs, axis.pmax(r.result), its + r.iterations, r.history, r.count, jnp.asarray(k, jnp.int32))

        carry = jax.lax.cond(carry[1] == Result.converged, lambda c: c, run_next, carry)
    vs, result, its, hist, _, idx = carry
    converged = result == Result.converged
    result = jnp.where(converged & (idx > 0), jnp.asarray(Result.fell_back, jnp.int32), result)
    return vs, Stats(axis.pmax(its), converged, idx, axis.pmax(hist), result)


# ---- the planner's view ------------------------------------------------------------------------
#: Seconds one collective costs beyond its bytes (host devices on one machine; a guess, not calibrated).
COLLECTIVE_LATENCY = 2.0e-5
#: Collectives per linear solve (all-gather of summaries, one boundary ppermute) and per Newton
#: iteration (that solve, the shift for the linearisation, the residual's pmax).
COLLECTIVES_LINEAR, COLLECTIVES_NEWTON = 2.0, 4.0


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What the plan knows about the mesh: the axis, its size P, the chunk length L = T/P, and for
    the chosen solver the predicted communication per call (numbers each shard receives, collectives).

    Pricing (``price``): a parallel solver's chunk costs its single-device prediction at T = L
    plus its summary reduction (≈ half a scan more), plus per linear solve COLLECTIVES × latency
    and the gathered P · (compact transition + D) numbers at the memory bandwidth; the
    sequential solver is a pipeline, P chunks one after another (no speed-up).
    """

    axis: str
    size: int
    chunk: int
    D: int = 0
    itemsize: int = 4
    summary_floats: float = 0.0  # floats of one chunk's composed transition (the summary structure)
    solver: str = ""
    comm_floats: float = float("nan")  # per call, numbers each shard receives
    collectives: float = float("nan")  # per call
    iterations: float = float("nan")

    @classmethod
    def of(cls, options: dict, facts: Any, rec: Any, K: Any) -> "ShardPlan | None":
        name, P = options.get("axis_name"), options.get("axis_size")
        if name is None or P is None:
            return None
        D = int(rec.size)
        st = facts["structure"]
        return cls(str(name), int(P), int(rec.length), D, int(jnp.dtype(rec.layout.vec_dtype).itemsize),
                   float(summary_structure(st).floats()))

    def _per_solve(self, quasi: bool) -> float:
        s = float(self.D) if quasi else self.summary_floats
        return self.size * (s + self.D) + self.D

    def traffic(self, solver: Any, iterations: float) -> tuple[float, float]:
        """(numbers received, collectives) per call of ``solver``."""
        if not solver.parallel:
            return float((self.size - 1) * self.D), float(self.size - 1)
        if solver.name == "linear":
            return self._per_solve(False), COLLECTIVES_LINEAR
        quasi = bool(getattr(solver, "quasi", False))
        it = max(float(iterations), 1.0)
        scans = float(getattr(solver, "scans", 1.0))  # elk: a smoother ≈ three scans, each two-level
        return it * (scans * self._per_solve(quasi) + 2 * self.D), it * COLLECTIVES_NEWTON * scans

    def price(self, solver: Any, p: Any, K: Any) -> Any:
        """The single-device prediction ``p`` (at T = L) as a time-sharded one (class docstring)."""
        floats, n = self.traffic(solver, p.iterations)
        comm = n * COLLECTIVE_LATENCY + floats * self.itemsize / K.bytes_per_s
        if not solver.parallel:
            return dataclasses.replace(p, time=self.size * p.time + comm, depth=p.depth * self.size)
        return dataclasses.replace(p, time=1.5 * p.time + comm, depth=p.depth + self.size)

    def chosen(self, row: Any) -> "ShardPlan":
        from .base import get_solver

        floats, n = self.traffic(get_solver(row.solver), row.iterations)
        return dataclasses.replace(self, solver=row.solver, comm_floats=floats, collectives=n, iterations=row.iterations)

    def describe(self) -> str:
        per = f"{self.comm_floats * self.itemsize:,.0f} bytes in {self.collectives:.0f} collectives per call"
        return (f"time-sharded over mesh axis {self.axis!r}: P = {self.size} shards of L = {self.chunk} steps "
                f"(T = {self.size * self.chunk}); {self.solver}: each shard receives ≈ {per} "
                f"(independent of T: P × (compact transition {self.summary_floats:.0f} + D {self.D}) per linear solve)")


# ---- ELK: the parallel Kalman smoother in the two-level form ----------------------------------
def sharded_associative_scan(combine, elems, axis: Axis):
    """All prefixes e_1 ∘ … ∘ e_t of an associative ``combine(earlier, later)`` (vectorised over the
    leading axis) over the sharded sequence: a local reduction, an all-gather of the P totals, their
    exclusive prefix in shard order folded into this chunk's first element, then the local scan.
    The generic two-level form, for operators that are not a linear recurrence (the Kalman filter's
    and smoother's elements)."""
    total = _tree_reduce(combine, elems)
    totals = axis.all_gather(total)  # (P, ...) by device index
    if axis.reverse:
        totals = jax.tree_util.tree_map(lambda x: jnp.flip(x, 0), totals)  # recurrence (position) order
    inclusive = jax.lax.associative_scan(combine, totals)
    pos = axis.position()
    prefix = jax.tree_util.tree_map(lambda x: x[jnp.maximum(pos - 1, 0)][None], inclusive)
    head = jax.tree_util.tree_map(lambda x: x[:1], elems)
    joined = combine(prefix, head)
    elems = jax.tree_util.tree_map(lambda e, j, h: e.at[:1].set(jnp.where(pos > 0, j, h)), elems, joined, head)
    return jax.lax.associative_scan(combine, elems)


def sharded_kalman_step(F, u, y, x0, lam, axis: Axis):
    """``autopar.solvers.elk.kalman_step`` on this shard's chunk of the sharded sequence (its module
    docstring has the maths): the first shard builds step 1's element from the known v_0, the
    smoother's last local step reads the next shard's J and u, the last shard closes with
    E_T = 0, g_T = m_T; both scans are ``sharded_associative_scan``."""
    from .elk import _combine, _mm, _solve, _tr, filter_elements, smoother_combine

    eye = jnp.eye(F.shape[-1], dtype=F.dtype)
    elems = filter_elements(F, u, y, x0, lam, first=axis.is_first())
    _, mf, Pf, _, _ = sharded_associative_scan(_combine, elems, axis)
    F1, u1 = axis.from_next((F[0], u[0]))
    Fn = jnp.concatenate([F[1:], F1[None]], 0)
    un = jnp.concatenate([u[1:], u1[None]], 0)
    S = _mm(_mm(Fn, Pf), _tr(Fn)) + jnp.broadcast_to(eye, Fn.shape)
    E = _tr(_solve(S, _mm(Fn, Pf)))
    g = mf - _mm(E, _mm(Fn, mf) + un)
    last = axis.is_last()
    E = E.at[-1].set(jnp.where(last, 0, E[-1]))
    g = g.at[-1].set(jnp.where(last, mf[-1], g[-1]))

    back = dataclasses.replace(axis, reverse=not axis.reverse)
    flip = lambda x: jnp.flip(x, 0)  # noqa: E731
    _, ms = sharded_associative_scan(smoother_combine, (flip(E), flip(g)), back)
    return flip(ms)


def elk_stage(problem: Problem, quasi: bool, axis: Axis) -> newton.Stage:
    """``autopar.solvers.elk.elk_stage`` across shards: the same damped step (``sharded_kalman_step``),
    trust-region λ update, and undamped polish (a two-level linear solve); the merit Σ‖r_t‖² is
    summed over the time axis, and every decision that gates a collective (stop, polish, stall)
    is reduced over all mesh axes (``Axis.pmax``)."""
    from . import elk as E
    from .quasi import diagonal_steps

    st = problem.structure
    D = problem.v0.shape[0]
    blk = E.Blocks(st, D, diagonal=quasi)
    tol = cv.options_tol(problem)
    max_iters = cv.options_max_iters(dataclasses.replace(problem, length=problem.length * axis.size), E.ELK_MAX_ITERS)
    lam0 = problem.options.get("damping")
    lam0 = E.LAMBDA_INIT if lam0 is None else float(lam0)
    if not lam0 > 0:
        raise ValueError(f"option `damping` (the initial Levenberg–Marquardt λ of elk) must be > 0; got {lam0!r}.")
    f, xt, v0 = problem.f, problem.xt, problem.v0
    rdt = jnp.zeros((), problem.dtype).real.dtype
    a_structure = Diagonal(D) if blk.diag else st

    def linearize(prev):
        if blk.diag:
            return diagonal_steps(f, st, prev, xt)
        return linearize_steps(f, st, prev, xt)

    def residual(V, fv, a):
        return axis.pmax(cv.stage_residual(a_structure, a, axis.shift(v0, V), V, fv))

    def step(V, fv, a, lam):
        prev = axis.shift(v0, V)
        F = jax.vmap(blk.mat)(a)
        u = jax.vmap(blk.vec)(fv) - E._mm(F, jax.vmap(blk.vec)(prev))
        y = jax.vmap(blk.vec)(V)
        return jax.vmap(blk.unvec)(sharded_kalman_step(F, u, y, blk.vec(v0), lam, axis))

    def merit(V, fv):
        m = jax.lax.psum(jnp.sum(jnp.abs(V - fv) ** 2).astype(rdt), axis.name)
        return jnp.where(jnp.isfinite(m), m, jnp.inf)

    def finite_all(x):
        return axis.pmax((~cv.finite(x)).astype(jnp.int32)) == 0

    def init(V):
        fv, a = linearize(axis.shift(v0, V))
        lam = jnp.asarray(lam0, rdt)
        return newton.State(V, residual(V, fv, a), (fv, a, merit(V, fv), lam), lam >= E.LAMBDA_MAX)

    def polish(args):
        V, fv, a, mer = args
        prev = axis.shift(v0, V)
        b = fv - jax.vmap(a_structure.matvec)(a, prev)
        Vp = sharded_linear_scan(a_structure, a, b, v0, axis)
        fp, ap = linearize(axis.shift(v0, Vp))
        mp = merit(Vp, fp)
        take = finite_all(Vp) & finite_all(fp) & (mp <= mer)
        pick = lambda new, old: jnp.where(take, new, old)  # noqa: E731
        return pick(Vp, V), pick(fp, fv), jax.tree_util.tree_map(pick, ap, a), pick(mp, mer)

    def advance(s):
        V, (fv, a, mer, lam) = s.V, s.aux
        cand = step(V, fv, a, lam)
        fc = cv.f_steps(f, axis.shift(v0, cand), xt)
        mc = merit(cand, fc)
        ok = jnp.isfinite(mc) & finite_all(cand) & finite_all(fc) & (mc < mer)
        V = jnp.where(ok, cand, V)
        fv = jnp.where(ok, fc, fv)
        mer = jnp.where(ok, mc, mer)
        a = jax.lax.cond(ok, lambda: linearize(axis.shift(v0, V))[1], lambda: a)
        lam = jnp.where(ok, jnp.maximum(lam * E.SHRINK, E.LAMBDA_MIN), lam * E.GROW)
        near = axis.pmax(jnp.max(jnp.abs(V - fv))) <= tol * (1.0 + axis.pmax(jnp.max(jnp.abs(V))))
        V, fv, a, mer = jax.lax.cond(near, polish, lambda args: args, (V, fv, a, mer))
        return newton.State(V, residual(V, fv, a), (fv, a, mer, lam), axis.pmax(lam) >= E.LAMBDA_MAX)

    return newton.newton_stage("quasi-elk" if quasi else "elk",
                               newton.Iteration(init, advance, monotone=True, verify=verifier(problem, axis)),
                               tol, max_iters)
