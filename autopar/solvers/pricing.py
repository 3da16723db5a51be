r"""The cost model's shared parts, which every solver's and adjoint's ``cost()`` is built from.

T steps, D state floats, f the flops of one step, s the compact floats of one J_t, c its
compose flops, m its matvec flops, K the backend constants of ``autopar.costs``; bytes are
streamed at ``K.bytes_per_s``:

* one sequential step: ``K.step_overhead + n_ops·K.op_overhead + f / K.seq_flops + bytes_t / K.bytes_per_s``
  where n_ops counts the step's non-fusable ops (dots, reductions, gathers; complex ones weigh
  ``K.complex_op_factor``) — ``seq_step_ops`` — plus ``K.loop_thunk_time`` when XLA:CPU runs
  the loop as thunks, its body touching ``K.loop_kernel_bytes`` or more an iteration
  (``loop_thunks``);
* ``extraction``: the step linearised and vmapped over T, one primal and ``n_jvps`` tangents,
  ``T·(f + n_jvps·f') / K.par_flops`` plus its traffic, f' the flops of one tangent
  (``costs.tangent_flops``: only the h-dependent part of the step carries one), plus
  ``T·(r + n_jvps·r')·K.row_op_time`` — every vmapped evaluation of the step pays
  ``row_op_time`` per equation per row (``rows``: r equations in the primal, r' in a tangent);
* ``scan``: the associative scan, ``levels(T)·K.level_overhead + T·K.scan_row_time + T·(s + D)·(K.scan_elem_time
  + φ·K.scan_miss_time) + T·o·K.scan_elem_time + 2T·(c + m) / K.par_flops`` (o: the kind's
  ``scan_overhead``) with ``levels(T) = 2⌈log₂T⌉`` and φ the
  fraction of its working set (≈ 3·T·(s + D) floats) beyond ``K.cache_bytes``;
* ``residual``: one vmapped evaluation of the step, ``T·(f / K.par_flops + r·K.row_op_time)``
  plus its traffic;
* ``newton``: the Newton family, ``iters × (extraction + scans·scan + residual)``; a quasi
  variant reads and scans diag(J) only.

Memory is the peak a solver keeps alive; a parallel one holds its compact factors and offsets
with the scan's temporaries, ≈ 3·T·(s + D) floats.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from autopar import costs
from autopar.structure import Diagonal

__all__ = ["Prediction", "levels", "loop_thunks", "sizes", "flops", "tangent", "rows", "seq_step_ops", "extraction", "scan",
           "residual", "newton_iterations", "newton"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What ``cost()`` predicts: seconds, peak bytes, iterations, flops and sequential depth."""

    time: float
    memory: float
    iterations: float
    work: float
    depth: float


def sizes(rec):
    """(T, D, itemsize, real flops per complex multiply-add, x bytes per step, float consts)."""
    T, D = max(int(rec.length), 1), int(rec.size)
    dt = np.dtype(rec.layout.vec_dtype)
    isz = dt.itemsize
    cplx = 4.0 if np.issubdtype(dt, np.complexfloating) else 1.0  # real flops per complex multiply-add
    xb = float(sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in rec.x_avals))
    # consts may be tracers (a cell closing over values of an outer jit): read shapes/dtypes only
    const_floats = float(sum(int(np.prod(np.shape(c), dtype=np.int64)) for c in rec.consts
                             if np.issubdtype(np.dtype(getattr(c, "dtype", np.float32)), np.inexact)))
    return T, D, isz, cplx, xb, const_floats


def flops(facts: Any, cplx: float) -> float:
    """Real flops of one step (``facts["step_flops"]``, complex ones weighed ``cplx``)."""
    return float(facts.get("step_flops", 1.0)) * cplx


def tangent(facts: Any, rec: Any, cplx: float) -> float:
    """Real flops of one tangent of the step (``facts["tangent_flops"]``, else counted off the jaxpr)."""
    tfl = facts.get("tangent_flops")
    if tfl is None:
        tfl = costs.tangent_flops(rec.step_jaxpr) if rec is not None else facts.get("step_flops", 1.0)
    return float(tfl) * cplx


def rows(facts: Any, rec: Any, tangents: int = 0) -> float:
    """Row passes of one vmapped evaluation of the step per time step: its equations
    (``facts["row_ops"]``, ``costs.row_ops``), plus ``tangents`` × those a tangent carries (the
    equations that read the state, ``facts["tangent_row_ops"]``) for a linearisation with that many
    JVPs: batched tangents are arrays (T, n, d), T·n rows of d."""
    r, tr = facts.get("row_ops"), facts.get("tangent_row_ops")
    if r is None:
        r = costs.row_ops(rec.step_jaxpr) if rec is not None else 0
    if not tangents:
        return float(r)
    if tr is None:
        tr = costs.row_ops(rec.step_jaxpr, n_state=1) if rec is not None else r
    return float(r + tangents * tr)


def seq_step_ops(facts: Any, rec: Any, K) -> float:
    """Seconds of fixed per-op cost in one sequential step (``facts["step_ops"]`` when the
    analysis provides it, else counted off the step's jaxpr)."""
    ops = facts.get("step_ops")
    real, cplx = ops if ops is not None else costs.step_ops(rec.step_jaxpr)
    return (real + K.complex_op_factor * cplx) * K.op_overhead


def loop_thunks(facts: Any, rec: Any, split: Any, K) -> float:
    """Seconds a sequential loop's step pays for running as XLA:CPU thunks rather than one
    compiled kernel: ``K.loop_thunk_time`` when its body touches ``K.loop_kernel_bytes`` or more
    an iteration (``facts["loop_body_bytes"]``, else counted off the loop body: ``split.inner``
    when the loop is hoisted, the step otherwise), 0 otherwise or where the backend has no
    such mode."""
    if not K.loop_thunk_time:
        return 0.0
    nbytes = facts.get("loop_body_bytes")
    if nbytes is None:
        body = split.inner if split is not None else (rec.step_jaxpr if rec is not None else None)
        nbytes = costs.loop_body_bytes(body) if body is not None else 0.0
    return K.loop_thunk_time if costs.loop_runs_as_thunks(K, nbytes) else 0.0


def levels(T: int) -> int:
    """Sequential depth of ``lax.associative_scan`` over T elements (up- and down-sweep)."""
    return 2 * math.ceil(math.log2(T)) if T > 1 else 1


def extraction(T, D, fl, st, isz, xb, K, tfl=None, rows=0.0):
    """Linearise the step at T points (vmapped): one primal (``fl`` flops) + n_jvps tangents
    (``tfl`` flops each; default ``fl``), ``rows`` row passes per time step at ``K.row_op_time``
    (``rows(facts, rec, st.n_jvps)``). (seconds, flops)"""
    work = T * (fl + st.n_jvps * (fl if tfl is None else tfl))
    traffic = T * (xb + (D + st.floats()) * isz)
    return work / K.par_flops + traffic / K.bytes_per_s + T * rows * K.row_op_time, work


def scan(T, D, st, isz, cplx, K):
    """One associative scan of T compact factors in structure ``st``. (seconds, flops)"""
    work = 2.0 * T * (st.compose_flops() + st.matvec_flops() + D) * cplx
    elems = st.floats() + D + st.scan_elements()
    t = (levels(T) * K.level_overhead + T * K.scan_row_time
         + T * (elems + st.scan_overhead()) * K.scan_elem_time * (isz / 4) + work / K.par_flops)
    t += T * elems * spill(3.0 * T * elems * isz, K) * getattr(K, "scan_miss_time", 0.0) * (isz / 4)
    return t, work


def spill(working_set: float, K) -> float:
    """Fraction of a working set (bytes) beyond the cache ``K.cache_bytes`` (0 when it fits)."""
    cache = getattr(K, "cache_bytes", math.inf)
    return max(0.0, 1.0 - cache / working_set) if working_set > 0 else 0.0


def residual(T, D, fl, isz, xb, K, rows=0.0):
    """Seconds of one vmapped evaluation of the step over T (the residual of an iterate), ``rows``
    its equations (``rows(facts, rec)``) at ``K.row_op_time`` a time step."""
    return T * fl / K.par_flops + T * (xb + 2 * D * isz) / K.bytes_per_s + T * rows * K.row_op_time


def newton_iterations(facts, quasi: bool) -> float:
    """Iterations a Newton-family solver should expect, from the degree and structure of the cell."""
    degree = facts.get("degree", "nonlinear")
    st = facts.get("structure")
    exact_diag = st is not None and st.is_diagonal
    if degree in ("constant", "affine"):
        base = 2.0  # one step, one check
    elif degree == "piecewise-linear":
        base = 4.0
    else:
        base = 8.0
    if quasi and not exact_diag:
        base *= 3.0  # linear rather than quadratic convergence
    return base


def newton(facts, rec, K, iters: float, *, quasi: bool, scans: float = 1.0, copies: float = 1.0) -> Prediction:
    """``iters`` Newton iterations, each an extraction, ``scans`` scans and one residual.

    ``quasi``: J is read and scanned as diag(J) (one structured pass, ~ a JVP) whatever the
    structure; ``copies``: how many sets of scan factors the iteration keeps alive (a Kalman
    smoother keeps its filter's as well as its own)."""
    T, D, isz, cplx, xb, _ = sizes(rec)
    st = facts["structure"]
    fl = flops(facts, cplx)
    scan_st = Diagonal(D) if quasi else st
    t_ex, w_ex = extraction(T, D, fl, scan_st, isz, xb, K, tangent(facts, rec, cplx),
                            rows(facts, rec, scan_st.n_jvps))
    t_sc, w_sc = scan(T, D, scan_st, isz, cplx, K)
    per_iter = t_ex + scans * t_sc + residual(T, D, fl, isz, xb, K, rows(facts, rec))
    # The scan's elements (three live copies: inputs, partial products, outputs) plus the T × D
    # arrays of the loop: iterate, best iterate, f values, the residual, xs-sized tangents and the
    # while-loop's double buffers. Measured (benchmarks/memory.py, dense GRU D = 64, quasi-deer,
    # T = 10⁶): 14 T·D floats in all, which this reproduces for quasi (3·2D + 8D); the 2 T·D it
    # used to count predicted 1.91 GiB against a measured 3.35 GiB.
    mem = 3.0 * T * (scan_st.floats() + D) * isz * copies + 8.0 * T * D * isz
    return Prediction(K.parallel_overhead + iters * per_iter, mem, iters, iters * (w_ex + scans * w_sc + T * fl),
                      iters * scans * levels(T))
