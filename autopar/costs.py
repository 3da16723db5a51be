r"""Backend constants of the cost model, where they come from, and a flop count of one step.

The planner predicts each candidate's time from a handful of per-backend constants:

====================  ===========================================================================
constant              meaning (measured by ``autopar.calibrate``)
====================  ===========================================================================
``step_overhead``     fixed seconds of one ``lax.scan`` iteration (loop + launch)
``seq_flops``         flop/s the body of a sequential step reaches on small vectors
``par_flops``         flop/s of large vectorised work (the step vmapped over T, batched matmuls)
``level_overhead``    fixed seconds of one level of ``lax.associative_scan``
``scan_elem_time``    seconds per stored float per step of an associative scan (its memory traffic)
``bytes_per_s``       streaming memory bandwidth
``loop_bytes_per_s``  bandwidth of a sequential loop's per-step write of its state into the
                      trajectory: a small strided copy, far below ``bytes_per_s`` on a CPU (the
                      loop's reads, x_t or residuals, stream at ``bytes_per_s``)
``op_overhead``       fixed seconds of each non-fusable op (dot, reduction, gather) in a scan step
``complex_op_factor`` how much dearer such an op is on complex operands (XLA:CPU: ~6×)
``parallel_overhead`` fixed seconds of a parallel program beyond its scan (extraction, glue)
``cache_bytes``       the working set a parallel program can keep in cache (CPU: last-level cache)
``scan_miss_time``    extra seconds per stored float per step when the scan's working set does
                      not fit in ``cache_bytes`` (its passes then stream from DRAM)
``vjp_eqn_time``      seconds per equation of a step's state-VJP in a reverse ``lax.scan`` (the
                      sequential adjoint), beyond its ops and flops
``row_op_time``       seconds per equation per time step of a step vmapped over T (extraction,
                      residual, the adjoints' vectorised VJPs), beyond its flops: XLA:CPU runs
                      a (T, d) op as T rows of d, and a narrow row costs far more than d flops
``scan_row_time``     seconds per time step of an associative scan beyond ``scan_elem_time`` per
                      float: a scan's level passes cost per row as well as per float
``loop_kernel_bytes`` XLA:CPU compiles a ``while`` loop whose body touches fewer bytes an
                      iteration into one kernel; a bigger one runs as thunks, dispatched one by one
                      every iteration (0: the backend has no such mode)
``loop_thunk_time``   the extra seconds per step of such a thunk-driven loop
====================  ===========================================================================

Where they come from, first match wins: ``set_constants`` (this process), the
calibration cache written by ``autopar.calibrate()`` (keyed by backend and
device kind, in ``cache_dir()``), then ``DEFAULTS``. Reading the cache never
measures anything: calibration only happens when the user calls ``calibrate``.

``DEFAULTS["cpu"]`` are the medians of several ``autopar.calibrate()`` runs on the 2-core
development machine (AMD EPYC, ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``); that
machine was shared and loaded, so each constant is good to perhaps ±30%. The
GPU/TPU defaults are **not measured here** (no accelerator was available): they
are published orders of magnitude — a few µs of launch/loop overhead per
sequential step, TFLOP/s-class vectorised throughput, TB/s-class bandwidth. Run
``autopar.calibrate()`` on the accelerator to replace them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from pathlib import Path

import numpy as np

from . import _compat, primitives

__all__ = [
    "BackendConstants",
    "DEFAULTS",
    "constants_for",
    "set_constants",
    "clear_constants",
    "cache_dir",
    "cache_path",
    "device_key",
    "load_cached",
    "save_cached",
    "default_memory_budget",
    "step_flops",
    "step_ops",
    "loop_thunk_ops",
    "loop_bandwidth",
    "row_ops",
    "loop_body_bytes",
    "loop_kernel_bytes",
    "loop_runs_as_thunks",
    "lagged_write_pays",
    "tangent_flops",
    "TRANSCENDENTAL_FLOPS",
]


@dataclasses.dataclass(frozen=True)
class BackendConstants:
    """Per-backend constants of the cost model (seconds, flop/s, bytes/s)."""

    step_overhead: float  # fixed cost of one sequential lax.scan iteration
    seq_flops: float  # flop/s a sequential step achieves on small vectors
    par_flops: float  # flop/s of large vectorised (batched over T) work
    level_overhead: float  # fixed cost of one level of an associative scan
    bytes_per_s: float  # memory bandwidth for streamed arrays
    scan_elem_time: float = 0.0  # s per stored float per step of an associative scan
    op_overhead: float = 0.0  # s per non-fusable op (dot, reduction, gather, …) in a sequential step
    complex_op_factor: float = 1.0  # how much dearer such an op is on complex operands
    parallel_overhead: float = 0.0  # fixed s of a parallel program (extraction, custom_vjp, glue)
    vjp_eqn_time: float = 1.5e-9  # s per equation of the step's state-VJP in a reverse lax.scan
    cache_bytes: float = 32 * 2**20  # working set of a parallel program that stays in cache
    scan_miss_time: float = 0.0  # extra s per stored float per step of a scan whose working set exceeds the cache
    loop_bytes_per_s: float = 0.0  # B/s of a sequential loop's per-step write of its state (0: bytes_per_s)
    row_op_time: float = 0.0  # s per equation per time step of a step vmapped over T, beyond its flops
    scan_row_time: float = 0.0  # s per time step of an associative scan, beyond its per-float traffic
    loop_kernel_bytes: float = 0.0  # XLA:CPU compiles a loop touching fewer bytes an iteration into one kernel (0: no such mode)
    loop_thunk_time: float = 0.0  # extra s per step of a loop XLA:CPU runs as thunks rather than one kernel
    source: str = "default"  # "default", "calibrated <date>", "set_constants"

    def replace(self, **kw) -> "BackendConstants":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "BackendConstants":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DEFAULTS = {
    # Measured by autopar.calibrate() on the 2-core development CPU, single-threaded Eigen.
    # A cheap cell's lax.scan step costs ~10 ns here: sequential is very hard to beat.
    "cpu": BackendConstants(step_overhead=4.4e-9, seq_flops=4.2e10, par_flops=7.2e10, level_overhead=4.3e-6,
                            bytes_per_s=1.5e10, scan_elem_time=0.6e-9, op_overhead=8.5e-8, complex_op_factor=5.0,
                            parallel_overhead=1.0e-5, vjp_eqn_time=1.5e-9,
                            # cache_bytes / scan_miss_time: from the dense-GRU linear adjoint, whose
                            # J factors (T·D² floats) cost ~3× more per float at T = 65536 (≈ 200 MiB
                            # of scan working set) than at T = 4096 (≈ 13 MiB), while the diagonal
                            # SSM's at T = 65536 (≈ 25 MiB) still ran at the in-cache rate.
                            cache_bytes=32 * 2**20, scan_miss_time=2.5e-9,
                            # loop_bytes_per_s: the write of a loop's state, ~1 ns a float: lax.scan
                            # of a·h + x returning its states minus the same returning its carry,
                            # 0.75 ns a float at D = 16 … 64, 0.3-0.45 at 128 … 512 (one kernel);
                            # earlier runs at D = 256 with the reads counted 3.5e9-5.0e9 B/s.
                            # 2-core EPYC, JAX 0.10.2
                            loop_bytes_per_s=4.0e9,
                            # row_op_time: the 16 suite cells' steps vmapped over T = 4096 alone
                            # (jit, min of 15 interleaved) fit t/T = 0.59·(flops/par_flops +
                            # traffic) + 4.4 ns × equations + 7 ns: measured/modelled 0.71-2.0,
                            # where flops and traffic alone gave 0.56-9.7 (DeltaNet 4×4: 87 ns a
                            # step measured, 13 modelled). Inside a linearisation or a VJP the
                            # equations fuse with their tangents and cost about half: 2.0-2.4 ns
                            # orders the two adjoints of 8 suite cells as measured (T = 4096), 4.4
                            # misorders two. 2-core EPYC, JAX 0.10.2.
                            row_op_time=2.0e-9,
                            # scan_row_time / scan_elem_time: a diagonal associative scan at T =
                            # 4096 (jit, min of 40 interleaved) costs 39 / 59 / 74 / 102 / 121 / 207
                            # ns a step at D = 1 / 4 / 16 / 32 / 64 / 128; net of its levels it fits
                            # 30 ns a step + 0.58 ns per stored float (D = 4 … 128), where one
                            # per-float constant (1.3 ns, calibrated at D = 16) overprices wide
                            # elements 1.4-3× (DeltaNet 16 × 16: 1.6 ms measured, 5.0 priced).
                            scan_row_time=3.0e-8,
                            # loop_kernel_bytes / loop_thunk_time: XLA:CPU's small-while-loop pass
                            # (threshold 1 KiB by default) compiles a loop touching fewer bytes an
                            # iteration into one kernel; a lax.scan of a·h + x returning its states
                            # at D = 4 … 256 runs 40-50 ns a step slower as thunks (threshold 0 vs
                            # 10⁹ in XLA_FLAGS, side by side). 2-core EPYC, JAX 0.10.2.
                            loop_kernel_bytes=1024.0, loop_thunk_time=4.5e-8,
                            source="default (2-core CPU, AMD EPYC)"),
    # Not measured (no GPU available): published orders of magnitude for a data-centre GPU.
    # A sequential step is at least one kernel launch (~5 µs); vectorised work runs at tens of
    # TFLOP/s and ~2 TB/s, so parallel scans win by orders of magnitude at long T.
    "gpu": BackendConstants(step_overhead=5e-6, seq_flops=1.0e10, par_flops=2.0e13, level_overhead=1.5e-5,
                            bytes_per_s=2.0e12, scan_elem_time=1.0e-11, op_overhead=5e-6, complex_op_factor=1.0,
                            parallel_overhead=5e-5, vjp_eqn_time=1e-6, cache_bytes=40 * 2**20,
                            scan_miss_time=0.0, loop_bytes_per_s=2.0e11, source="default (published GPU orders)"),
    "tpu": BackendConstants(step_overhead=5e-6, seq_flops=1.0e10, par_flops=5.0e13, level_overhead=1.5e-5,
                            bytes_per_s=1.0e12, scan_elem_time=2.0e-11, op_overhead=5e-6, complex_op_factor=1.0,
                            parallel_overhead=5e-5, vjp_eqn_time=1e-6, cache_bytes=32 * 2**20,
                            scan_miss_time=0.0, loop_bytes_per_s=1.0e11, source="default (published TPU orders)"),
}

_OVERRIDES: dict[str, BackendConstants] = {}
_LOADED: dict[tuple[str, str], BackendConstants | None] = {}


# ---- cache --------------------------------------------------------------------------
def loop_bandwidth(K: BackendConstants) -> float:
    """``K.loop_bytes_per_s``, or ``K.bytes_per_s`` for constants that predate it (0)."""
    return K.loop_bytes_per_s if K.loop_bytes_per_s > 0 else K.bytes_per_s


def cache_dir() -> Path:
    """Where calibrations are cached: $AUTOPAR_CACHE_DIR, else $XDG_CACHE_HOME/autopar, else ~/.cache/autopar."""
    if os.environ.get("AUTOPAR_CACHE_DIR"):
        return Path(os.environ["AUTOPAR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autopar"


def cache_path() -> Path:
    return cache_dir() / "constants.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_key(backend: str) -> str:
    """Cache key: backend and device kind (on CPU also the CPU model and core count)."""
    import jax

    try:
        dev = jax.devices(backend)[0]
        kind = str(getattr(dev, "device_kind", backend))
    except RuntimeError:
        kind = "unavailable"
    if backend == "cpu":
        kind = f"{kind}|{_cpu_model()}|{os.cpu_count()} cores"
    return f"{backend}|{kind}"


def _read_cache() -> dict:
    try:
        with open(cache_path()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_cached(backend: str) -> BackendConstants | None:
    """Constants ``calibrate()`` cached for this backend and device, or None. Never measures."""
    key = (str(cache_path()), backend)
    if key not in _LOADED:
        entry = _read_cache().get(device_key(backend))
        try:
            _LOADED[key] = BackendConstants.from_json(entry) if entry else None
        except TypeError:
            _LOADED[key] = None
    return _LOADED[key]


def save_cached(backend: str, constants: BackendConstants) -> Path:
    """Write ``constants`` to the cache under this backend's device key; returns the file."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache()
    data[device_key(backend)] = constants.to_json()
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    _LOADED.pop((str(path), backend), None)
    return path


# ---- lookup -------------------------------------------------------------------------
def constants_for(backend: str) -> BackendConstants:
    """The constants the planner uses for ``backend`` (override > calibration cache > default)."""
    if backend in _OVERRIDES:
        return _OVERRIDES[backend]
    if backend in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        try:
            cached = load_cached(backend)
        except Exception:  # noqa: BLE001 - a broken cache must never break planning
            cached = None
        if cached is not None:
            return cached
    if backend in ("cuda", "rocm"):
        backend = "gpu"
    return DEFAULTS.get(backend, DEFAULTS["gpu"])


def set_constants(backend: str, constants: BackendConstants) -> None:
    """Use ``constants`` for ``backend`` in this process (beats the cache and the defaults)."""
    _OVERRIDES[backend] = constants


def clear_constants() -> None:
    """Forget ``set_constants`` overrides and the in-memory copy of the cache."""
    _OVERRIDES.clear()
    _LOADED.clear()


# ---- memory -------------------------------------------------------------------------
def _physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget(backend: str, fraction: float = 0.5) -> float:
    """``fraction`` of the device's memory (accelerators) or of physical RAM (CPU), in bytes."""
    import jax

    total = None
    if backend != "cpu":
        try:
            stats = jax.devices(backend)[0].memory_stats() or {}
            total = stats.get("bytes_limit") or stats.get("bytes_reservable_limit")
        except Exception:  # noqa: BLE001
            total = None
    if total is None:
        total = _physical_memory()
    return float("inf") if total is None else fraction * float(total)


# ---- flops of one step ----------------------------------------------------------------
#: Flops charged per element of a transcendental (measured on CPU: a sin costs ~20 adds).
TRANSCENDENTAL_FLOPS = 20.0


def step_flops(jaxpr) -> float:
    """Approximate flops of one evaluation of ``jaxpr``.

    dot_general: 2·M·N·K; transcendental elementwise ops: ``TRANSCENDENTAL_FLOPS`` per
    element; other ops: 1 per element of their largest operand or result.
    """
    total = 0.0
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            total += step_flops(sub)
            continue
        name = eqn.primitive.name
        out_size = _out_size(eqn)
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name in ("scan", "while"):
            total += _scan_flops(eqn)
        else:
            in_size = max([int(np.prod(a.aval.shape, dtype=np.int64)) for a in eqn.invars if hasattr(a.aval, "shape")] or [0])
            t = primitives.row(name)
            weight = TRANSCENDENTAL_FLOPS if t is not None and t.transcendental else 1.0
            total += weight * max(out_size, in_size)
    return float(total)


def tangent_flops(jaxpr, n_state: int = 1) -> float:
    """Flops of one tangent (JVP) of ``jaxpr`` w.r.t. its first ``n_state`` inputs (the state).

    Only equations that read the state carry a tangent (JAX's JVP of an op whose inputs are all
    h-independent is a symbolic zero: ``x @ W`` is not recomputed per tangent), and the tangent
    of an elementwise op is a multiply-add by its derivative (2 flops per element, also for a
    transcendental, whose value the primal already computed). A dot whose two operands both
    carry tangents costs two products. This is what a compressed Jacobian extraction pays per
    JVP on top of the one primal evaluation.
    """
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    return _tangent_flops(jp, set(jp.invars[:n_state]))


def _tangent_flops(jp, live) -> float:
    total = 0.0
    for eqn, hot in _leaf_eqns(jp, live):
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn) * len(hot)
        elif name in ("scan", "while"):
            total += 2.0 * _scan_flops(eqn)
        else:
            total += 2.0 * _out_size(eqn)
    return float(total)


def _leaf_eqns(jp, live=None):
    """(equation, hot) for the equations of ``jp``, through call-like sub-jaxprs (a call whose
    sub-jaxpr does not take its operands one to one is yielded whole). With ``live`` (variables),
    only those that read one, ``hot`` the indices of the inputs that do; what they write is live
    after them, as are a sub-jaxpr's inputs fed by live operands. Without, every equation, ``hot``
    None."""
    live = None if live is None else set(live)
    for eqn in jp.eqns:
        hot = None
        if live is not None:
            hot = [i for i, v in enumerate(eqn.invars) if not isinstance(v, _compat.Literal) and v in live]
            if not hot:
                continue
            live.update(eqn.outvars)
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            sj = sub.jaxpr if isinstance(sub, _compat.ClosedJaxpr) else sub
            if hot is None:
                yield from _leaf_eqns(sj)
                continue
            if len(sj.invars) == len(eqn.invars):
                yield from _leaf_eqns(sj, {sj.invars[i] for i in hot})
                continue
        yield eqn, hot


def _scan_flops(eqn) -> float:
    """Flops of a scan / while equation: its bodies' flops × its length (1 for a while)."""
    return sum(step_flops(j) * int(eqn.params.get("length", 1) or 1) for j in _compat.jaxprs_in_params(eqn.params))


def _out_size(eqn) -> int:
    """Elements of an equation's array outputs."""
    return sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in eqn.outvars if hasattr(v.aval, "shape"))


def _contraction(eqn) -> int:
    """The contracted length of a dot_general (1 for an outer product)."""
    (lc, _), _ = eqn.params["dimension_numbers"]
    return int(np.prod([eqn.invars[0].aval.shape[d] for d in lc], dtype=np.int64))


def _dot_flops(eqn) -> float:
    """2 · (output elements) · (contracted size) of a dot_general."""
    return 2.0 * _out_size(eqn) * max(_contraction(eqn), 1)


#: Smaller ops are fused or inlined by XLA (a 4×4 matvec, a sum of 16 numbers) and cost
#: no more than elementwise work: measured on XLA:CPU, a reduction of 16 floats in a scan
#: step adds ~10 ns, of 64 floats ~130 ns; a 16×16 matvec ~90 ns, a 4×4 one nothing visible.
#: A dot_general is never fused into a loop fusion on XLA:CPU (the compiled loop body keeps
#: every matvec as its own ``dot``); from 64 flops up — a 6×6 or 8×4 matvec — it costs a
#: launch like a big one: a DeltaNet step with three 6×6 dots costs ~8× one with 4×4 dots
#: (measured side by side, 2-core Xeon, JAX 0.10.2), and the demo's Mamba step (two 8×16 and
#: one 8×4 dot) ran 1.7× slower than the linear scan the model had priced above it.
KERNEL_MIN_ELEMS = 64
KERNEL_MIN_FLOPS = 64


def _is_kernel(eqn) -> bool:
    name = eqn.primitive.name
    t = primitives.row(name)
    if t is None or not t.kernel:  # a kernel of its own: a sequential step cannot fuse it
        return False
    sizes = [int(np.prod(a.aval.shape, dtype=np.int64)) for a in eqn.invars if hasattr(a.aval, "shape")]
    if name == "dot_general":
        return _dot_flops(eqn) >= KERNEL_MIN_FLOPS
    return max(sizes or [0]) >= KERNEL_MIN_ELEMS


def step_ops(jaxpr) -> tuple[float, float]:
    """(real, complex) counts of non-fusable ops in one step (rows with ``kernel`` in ``autopar.primitives``).

    Only ops big enough not to be fused count (``KERNEL_MIN_ELEMS``, ``KERNEL_MIN_FLOPS``).
    An op counts as complex when any operand or result is complex.
    """
    real = cplx = 0.0
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            r, c = step_ops(sub)
            real, cplx = real + r, cplx + c
            continue
        t = primitives.row(eqn.primitive.name)
        if t is not None and t.dataflow == "control-flow":
            n = int(eqn.params.get("length", 1) or 1)
            for sub_j in _compat.jaxprs_in_params(eqn.params):
                r, c = step_ops(sub_j)
                real, cplx = real + n * r + 1, cplx + n * c
            continue
        if not _is_kernel(eqn):
            continue
        avals = [a.aval for a in list(eqn.invars) + list(eqn.outvars) if hasattr(a.aval, "dtype")]
        if any(np.issubdtype(a.dtype, np.complexfloating) for a in avals):
            cplx += 1
        else:
            real += 1
    return real, cplx


#: Reductions, which XLA:CPU ends a loop fusion with (their consumers start another).
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                         "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})


def loop_thunk_ops(jaxpr) -> int:
    """Thunks one step's ops add to an XLA:CPU loop body, whatever their size (``step_ops`` prices
    only the big ones): 2 per matrix product — a ``dot_general`` with a contraction of length ≥ 2
    and ≥ 2 outputs runs as a ``dot`` thunk of its own, and the fusion after it another (a
    vector·vector dot or a length-1 contraction is rewritten as a fused multiply / reduce) — and 1
    per reduction. The compiled body also holds ~``LOOP_BASE_THUNKS`` of its own (measured, JAX
    0.10.2: a DeltaNet step with three 4×4 matvecs and a norm compiles to 11 thunks, a D = 2
    SSM's with one 2×2 matvec to 6)."""
    n = 0
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            n += loop_thunk_ops(sub)
        elif eqn.primitive.name == "dot_general":
            n += 2 * int(_contraction(eqn) >= 2 and _out_size(eqn) >= 2)
        elif eqn.primitive.name in _REDUCTIONS:
            n += 1
        else:
            for sub_j in _compat.jaxprs_in_params(eqn.params):
                n += loop_thunk_ops(sub_j)
    return n


#: Thunks of a compiled loop body besides its ops' (``loop_thunk_ops``): the counter's copy and
#: increment, the step's fusion and the write of its output.
LOOP_BASE_THUNKS = 4


#: Equations that move or re-label data without arithmetic: XLA folds them into the ops around
#: them (a vmapped step's reshape or broadcast is not a pass of its own).
_LAYOUT_ONLY = frozenset({"reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims",
                          "slice", "copy", "copy_p", "select_n", "transpose", "concatenate", "pad", "rev"})


def row_ops(jaxpr, n_state: int | None = None) -> int:
    """Equations of one step that a vmapped evaluation runs as a pass over T rows (all but
    ``_LAYOUT_ONLY``), counting through call-like sub-jaxprs; with ``n_state``, only those that
    read the first ``n_state`` inputs (the state), as a tangent does. Priced at ``row_op_time``."""
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    live = None if n_state is None else jp.invars[:n_state]
    return sum(eqn.primitive.name not in _LAYOUT_ONLY for eqn, _ in _leaf_eqns(jp, live))


def loop_body_bytes(jaxpr) -> float:
    """Bytes one iteration of a ``lax.scan`` running ``jaxpr`` as its step (writing its outputs as
    the carry and into the trajectory) touches, as XLA:CPU's cost analysis counts them for its
    small-loop test (``loop_runs_as_thunks``): the inputs and array constants the step reads,
    each output 4 times (the step's fusion writes it, the trajectory's dynamic-update-slice reads
    it and writes its row, the carry), and each matrix product's (``dot_general`` with a
    contraction ≥ 2) non-constant operands and output twice over (a product is an instruction of
    its own, not fused). An estimate off the jaxpr: measured, a ``lax.scan`` of ``a·h + x``
    compiles to one kernel at 32 floats and to thunks at 48 (JAX 0.10.2, threshold 1 KiB); it
    reads what XLA fuses, not how."""
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr

    def var_bytes(v):
        a = getattr(v, "aval", None)
        return _nbytes(a.shape, a.dtype) if hasattr(a, "dtype") else 0.0

    consts = {id(v) for v in jp.constvars}
    # what the top level reads (a call-like equation reads its operands whole)
    read = {id(v) for e in jp.eqns for v in e.invars if not isinstance(v, _compat.Literal)}
    read.update(id(v) for v in jp.outvars if not isinstance(v, _compat.Literal))
    total = 0.0
    for eqn, _ in _leaf_eqns(jp):  # matrix products, inside calls too
        if eqn.primitive.name == "dot_general" and _contraction(eqn) >= 2:
            total += sum(var_bytes(v) for v in eqn.invars
                         if not isinstance(v, _compat.Literal) and id(v) not in consts)
            total += 2 * sum(var_bytes(v) for v in eqn.outvars)
    total += sum(var_bytes(v) for v in jp.invars if id(v) in read)
    total += sum(var_bytes(v) for v in jp.constvars if id(v) in read and np.prod(v.aval.shape, dtype=np.int64) > 1)
    return total + _nested_const_bytes(jp) + 4.0 * sum(var_bytes(v) for v in jp.outvars)


def _nbytes(shape, dtype) -> float:
    """Bytes of an array of ``shape`` and ``dtype``."""
    return float(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _nested_const_bytes(jp) -> float:
    """Bytes of the array constants closed over inside the call-like sub-jaxprs of ``jp`` (a
    ``jax.jit`` inside the cell keeps what it closes over there)."""
    total = 0.0
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        if sub is None:
            continue
        total += sum(_nbytes(np.shape(c), getattr(c, "dtype", np.float32))
                     for c in sub.consts if np.prod(np.shape(c), dtype=np.int64) > 1)
        total += _nested_const_bytes(sub.jaxpr)
    return total


def loop_kernel_bytes(K: BackendConstants) -> float | None:
    """The per-iteration bytes below which XLA:CPU compiles a ``while`` loop into one kernel
    (its small-while-loop pass; ``xla_cpu_small_while_loop_byte_threshold`` in ``XLA_FLAGS``'s
    ``--xla_backend_extra_options`` when set there, else ``K.loop_kernel_bytes``); None where
    the backend has no such mode (``K.loop_kernel_bytes`` = 0)."""
    if not K.loop_kernel_bytes:
        return None
    found = re.search(r"xla_cpu_small_while_loop_byte_threshold=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return float(found.group(1)) if found else float(K.loop_kernel_bytes)


def loop_runs_as_thunks(K: BackendConstants, body_bytes: float) -> bool:
    """Whether XLA:CPU runs a sequential loop whose body touches ``body_bytes`` an iteration
    (``loop_body_bytes``) as a thunk-driven while loop — each iteration dispatching its body's
    thunks, ``K.loop_thunk_time`` a step more — rather than one compiled kernel."""
    limit = loop_kernel_bytes(K)
    return limit is not None and body_bytes >= limit


def lagged_write_pays(closed, n_state: int, K: BackendConstants) -> bool:
    """Whether a sequential loop running ``closed`` (state: its first ``n_state`` inputs) should
    write each state one iteration late (``solvers.sequential._lagged_scan``).

    XLA:CPU fuses a dot-free step into the trajectory's dynamic-update-slice and computes it there
    a second time, element by element, and splits a DAG-shaped elementwise chain into fusions
    that recompute each other's prefixes; the lagged write reads a loop parameter instead, and
    each transcendental is evaluated once, vectorised. Measured (2-core EPYC, JAX 0.10.2,
    T = 4096, forced sequential, ns a step, lax.scan → lagged): h ← ½h + ½u·tanh(h + x) at
    D = 16 134 → 46; the suite's cheap-ops 2497 → 702; chains of 1–8 transcendentals of the
    state at D = 16 and 64: 0.15–1.16× (14 of 16 faster); the diagonal GRU 1.00. Without a
    transcendental it is a wash or a loss (multi-axis 0.86–0.95, mamba 1.05, the D = 256 SSM
    1.04, a D = 2 SSM 1.63), as with a matrix product (dense GRU, LSTM, DeltaNet: +4–74 %) or
    complex values (LRU: +75 %). So: on a backend with XLA:CPU's loop modes
    (``K.loop_kernel_bytes`` > 0), a real, dot-free body evaluating a transcendental of the
    state."""
    if not K.loop_kernel_bytes:
        return False
    jp = closed.jaxpr if isinstance(closed, _compat.ClosedJaxpr) else closed
    avals = [v.aval for v in list(jp.invars) + list(jp.outvars) if hasattr(getattr(v, "aval", None), "dtype")]
    if any(np.issubdtype(a.dtype, np.complexfloating) for a in avals):
        return False
    if any(eqn.primitive.name == "dot_general" for eqn, _ in _leaf_eqns(jp)):
        return False
    return any(getattr(primitives.row(eqn.primitive.name), "transcendental", False)
               for eqn, _ in _leaf_eqns(jp, jp.invars[:n_state]))


def count_eqns(jaxpr) -> int:
    """Equations of ``jaxpr``, counting through call-like sub-jaxprs (jit, custom_jvp, …)."""
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    n = 0
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        n += count_eqns(sub) if sub is not None else 1
    return n


def state_vjp_jaxpr(step, v, *args):
    """The closed jaxpr of (λ, v, *args) ↦ J_tᵀ λ for ``step(v, *args)``: the body of the
    sequential adjoint's reverse ``lax.scan`` (the primal recomputed, dead code removed), the
    cotangent first as the loop's state. ``v`` and ``args`` may be ``ShapeDtypeStruct``s."""
    import jax

    def adjoint_step(g, v, *a):
        return jax.vjp(lambda v: step(v, *a), v)[1](g)[0]

    closed = jax.make_jaxpr(adjoint_step)(v, v, *args)
    return _compat.dce(closed, [True] * len(closed.jaxpr.outvars))[0]


def state_vjp_counts(step, v, *args) -> tuple[int, tuple[float, float], float]:
    """(equations, (real, complex) non-fusable ops, flops) of ``state_vjp_jaxpr``; traced, never compiled."""
    closed = state_vjp_jaxpr(step, v, *args)
    return count_eqns(closed), step_ops(closed), step_flops(closed)


def vjp_step(rec):
    """``state_vjp_jaxpr`` of the recurrence's step: its VJP w.r.t. the state, the body of the
    sequential adjoint's reverse ``lax.scan``; the cotangents of x and θ are one vmapped VJP
    outside the loop. The step's constants stay closed over, as in the solve."""
    import jax

    jp = rec.step_jaxpr
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jp.jaxpr.invars]
    consts = list(jp.consts)
    n_disc = rec.n_discrete

    def step(v, disc, xl):  # the emitter's step: discrete state and x leaves after v
        return _compat.eval_jaxpr(jp.jaxpr, consts, v, *disc, *xl)[0]

    return state_vjp_jaxpr(step, avals[0], avals[1 : 1 + n_disc], avals[1 + n_disc :])
