r"""``autopar.calibrate()``: measure the cost model's constants on this machine and cache them.

Micro-benchmarks of a few milliseconds each, blocked until ready; each reports the
*minimum* over repeats (other processes only ever add time, so the minimum is the
steadiest estimate of a program's own cost on a shared machine):

1. ``step_overhead`` — per-step time of ``lax.scan`` over ``h ← a·h + x`` with D = 1
   (all loop overhead, no work).
   ``loop_bytes_per_s`` — the same loop at D = 256 returning its states: the write of D floats
   a step, net of ``step_overhead``, of the thunk dispatch (``loop_thunk_time``, when the body is
   past ``loop_kernel_bytes``) and of reading x_t at ``bytes_per_s`` (step 2).
2. ``bytes_per_s`` — a streamed ``a·x + b`` over 2²² floats (3 arrays read/written).
3. ``seq_flops`` — ``lax.scan`` over ``h ← tanh(W h + x)``, D = 64:
   step_flops / (per-step time − overhead).
4. ``par_flops`` — a batched matmul (T, D) @ (D, D), the shape of a step vmapped over time.
5. ``level_overhead``, ``scan_row_time``, ``scan_elem_time`` — a hand-written diagonal
   ``lax.associative_scan`` at a short, narrow size (overhead-bound, T = 256, D = 1) and two
   wider ones (T = 4096, D = 16 and 64, where CPU crossovers happen); net of the fixed cost of
   dispatching a jitted call, the first two solve  t = levels(T)·level_overhead + T·(2D)·scan_elem_time
   and, net of the levels, the two widths  t = … + T·scan_row_time + T·(2D)·scan_elem_time
   (``scan_row_time`` = 0 when noise makes a term non-positive).
6. ``op_overhead``, ``complex_op_factor`` — ``lax.scan`` over ``a·h + x B`` (D = 16) minus
   the same without the matmul, in float32 and in complex64.
7. ``parallel_overhead`` — autopar's linear solver on a tiny affine cell minus the
   hand-written scan of the same size (extraction, glue, custom_vjp).
8. ``cache_bytes``, ``scan_miss_time`` — the last-level cache's size (read from the OS, at
   most ``MAX_CACHE_BYTES``: a shared cache is not all one process's), and the extra time per
   stored float per step of a diagonal scan whose working set (T = 2²⁰, D = 16: ≈ 384 MiB) is
   far beyond it, over the in-cache ``scan_elem_time`` of step 5.

``row_op_time``, ``loop_kernel_bytes`` and ``loop_thunk_time`` are not measured: they keep the
backend's defaults (``costs.DEFAULTS``, where the measurements they come from are described;
``XLA_FLAGS`` can move the small-loop threshold, which ``costs.loop_kernel_bytes`` reads).

Results are written to ``autopar.costs.cache_path()`` under the key
``costs.device_key(backend)`` and used by every later plan in any process on this
machine. The planner only *reads* that cache; it never calibrates by itself.
"""

from __future__ import annotations

import datetime
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat, costs

__all__ = ["calibrate"]


def _time(fn, *args, repeats: int = 5, min_time: float = 0.01) -> float:
    jax.block_until_ready(fn(*args))  # compile
    out = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        out.append(dt / n)
    return min(out)


def scan_program(cell):
    """``jit(h0, xs -> states)`` by plain ``lax.scan``: the sequential baseline we measure against."""

    @jax.jit
    def run(h0, xs):
        def body(h, x):
            h = cell(h, x)
            return h, h

        return jax.lax.scan(body, h0, xs)[1]

    return run


def _vjp_eqn_time(backend: str, repeats: int, step_overhead: float, seq_flops: float, T: int = 4096,
                  D: int = 16) -> float:
    """Seconds per equation of a step's state-VJP in a reverse lax.scan (the sequential adjoint's
    body, ``costs.vjp_step``), beyond the loop overhead and its flops: an elementwise GRU-like cell."""
    dev = jax.devices(backend)[0]
    rng = np.random.default_rng(0)
    p = tuple(jax.device_put(jnp.asarray(rng.standard_normal(D) / 4, jnp.float32), dev) for _ in range(2))

    def step(p, h, x):
        z = jax.nn.sigmoid(p[0] * h + x)
        return (1 - z) * h + z * jnp.tanh(p[1] * h + x)

    def adjoint_step(p, h, x, g):
        return jax.vjp(lambda h: step(p, h, x), h)[1](g)[0]

    hs = jax.device_put(jnp.asarray(rng.standard_normal((T, D)), jnp.float32), dev)

    @jax.jit
    def back(p, hs, xs, g):
        def body(lam, inp):
            h, x, gt = inp
            lam = gt + lam
            return adjoint_step(p, h, x, lam), lam

        return jax.lax.scan(body, jnp.zeros((D,), jnp.float32), (hs, xs, g), reverse=True)

    per_step = _time(back, p, hs, hs, hs, repeats=repeats) / T
    n, _, flops = costs.state_vjp_counts(lambda h, p, x: step(p, h, x), hs[0], p, hs[0])
    rest = per_step - step_overhead - flops / seq_flops
    return max(rest / max(n, 1), 1e-10)


def _scan_per_step(cell, D: int, T: int, backend: str, repeats: int, dtype=jnp.float32) -> float:
    dev = jax.devices(backend)[0]
    h0 = jax.device_put(jnp.zeros((D,), dtype), dev)
    xs = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((T, D)), jnp.float32), dev)

    return _time(scan_program(cell), h0, xs, repeats=repeats) / T


def _assoc_scan_time(T: int, D: int, backend: str, repeats: int) -> float:
    dev = jax.devices(backend)[0]
    rng = np.random.default_rng(1)
    a = jax.device_put(jnp.asarray(rng.uniform(0.5, 0.99, (T, D)), jnp.float32), dev)
    b = jax.device_put(jnp.asarray(rng.standard_normal((T, D)), jnp.float32), dev)

    @jax.jit
    def run(a, b):
        return jax.lax.associative_scan(lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1]), (a, b))[1]

    return _time(run, a, b, repeats=repeats)


def _parallel_overhead(backend: str, repeats: int) -> float:
    from .api import parallelize

    T, D = 64, 4
    dev = jax.devices(backend)[0]
    a = jax.device_put(jnp.full((D,), 0.9, jnp.float32), dev)
    h0 = jax.device_put(jnp.zeros((D,), jnp.float32), dev)
    xs = jax.device_put(jnp.ones((T, D), jnp.float32), dev)
    lin = parallelize(lambda h, x: a * h + x, solver="linear")

    @jax.jit
    def hand(h0, xs):
        A = jnp.broadcast_to(a, xs.shape)
        b = xs.at[0].add(a * h0)
        return jax.lax.associative_scan(lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1]), (A, b))[1]

    with jax.default_device(dev):
        t_lin = _time(lin, h0, xs, repeats=repeats)
    t_hand = _time(hand, h0, xs, repeats=repeats)
    return max(t_lin - t_hand, 0.0)


#: A cache shared by many cores (or reported whole on a VM) is not all one process's.
MAX_CACHE_BYTES = 64 * 2**20


def _llc_bytes() -> float | None:
    """Size of the largest CPU cache the OS reports (Linux sysfs), or None."""
    import glob

    best = None
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            txt = open(path).read().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(txt[-1:], 1)
            n = float(txt[:-1] if txt[-1:] in "KMG" else txt) * mult
        except (OSError, ValueError):
            continue
        best = n if best is None else max(best, n)
    return best


def _levels(T: int) -> int:
    return 2 * math.ceil(math.log2(T)) if T > 1 else 1


def _inside_trace() -> bool:
    return isinstance(jnp.zeros(()), _compat.Tracer)


def calibrate(backend: str | None = None, *, save: bool = True, repeats: int = 7,
              verbose: bool = False) -> costs.BackendConstants:
    """Measure the cost model's constants on ``backend`` (default: JAX's default backend).

    Takes a few seconds. With ``save=True`` (default) the result is cached in
    ``autopar.costs.cache_path()`` keyed by backend and device kind, and every later
    plan on this machine uses it. Returns the measured ``BackendConstants``.

    Call it once, outside ``jax.jit`` — autopar never calibrates on its own.
    """
    if _inside_trace():
        raise RuntimeError(
            "autopar.calibrate() was called inside a traced function (jax.jit/vmap/grad). "
            "It runs micro-benchmarks and must be called eagerly, once, e.g. at the top of a script."
        )
    backend = backend or jax.default_backend()
    try:
        dev = jax.devices(backend)[0]
    except RuntimeError as e:
        raise ValueError(f"`backend={backend!r}` is not available here ({e}). Available: {jax.default_backend()!r}.") from e
    log = print if verbose else (lambda *a, **k: None)

    # 1. loop overhead of one sequential step
    T1 = 1 << 15
    step_overhead = _scan_per_step(lambda h, x: 0.5 * h + x, 1, T1, backend, repeats)
    log(f"step_overhead  {step_overhead:.3g} s")
    default = costs.DEFAULTS.get(backend, costs.DEFAULTS["gpu"])
    # 1b. a loop's per-step write of its state, D = 256 (net of bandwidth below, step 2)
    Dlb = 256
    per_256 = _scan_per_step(lambda h, x: 0.5 * h + x, Dlb, 1 << 12, backend, repeats)

    # 2. streaming bandwidth
    n = 1 << 21
    x = jax.device_put(jnp.ones((n,), jnp.float32), dev)
    y = jax.device_put(jnp.ones((n,), jnp.float32), dev)
    t_bw = _time(jax.jit(lambda x, y: 1.5 * x + y), x, y, repeats=repeats)
    bytes_per_s = 3 * n * 4 / t_bw
    log(f"bytes_per_s    {bytes_per_s:.3g} B/s")
    # 1b, continued: the state's write is what is left of the D = 256 step once the loop's fixed
    # cost, its thunk dispatch (when its body, h and x_t in, the state out ×4, is past the
    # backend's small-loop threshold) and the read of x_t at bytes_per_s are taken off.
    thunks = default.loop_thunk_time if costs.loop_runs_as_thunks(default, 6 * Dlb * 4) else 0.0
    rest = per_256 - step_overhead - thunks - Dlb * 4 / bytes_per_s
    loop_bytes_per_s = Dlb * 4 / max(rest, 0.1 * per_256)
    log(f"loop_bytes_per_s {loop_bytes_per_s:.3g} B/s")

    # 3. sequential flop rate on a small dense cell
    D = 64
    W = jax.device_put(jnp.asarray(np.random.default_rng(2).standard_normal((D, D)) / np.sqrt(D), jnp.float32), dev)
    cell = lambda h, x: jnp.tanh(W @ h + x)  # noqa: E731
    fl = costs.step_flops(jax.make_jaxpr(cell)(jnp.zeros((D,), jnp.float32), jnp.zeros((D,), jnp.float32)))
    per = _scan_per_step(cell, D, 1 << 12, backend, repeats)
    seq_flops = fl / max(per - step_overhead, 0.1 * per)
    log(f"seq_flops      {seq_flops:.3g} flop/s")

    # 4. vectorised flop rate: a step vmapped over time is a (T, D) @ (D, D) matmul
    Tm = 1 << 12
    H = jax.device_put(jnp.ones((Tm, D), jnp.float32), dev)
    t_mm = _time(jax.jit(lambda H, W: jnp.tanh(H @ W)), H, W, repeats=repeats)
    par_flops = (2.0 * Tm * D * D + costs.TRANSCENDENTAL_FLOPS * Tm * D) / t_mm
    log(f"par_flops      {par_flops:.3g} flop/s")

    # 5. associative scan: per-level overhead and per-element traffic (net of the fixed cost
    #    of dispatching any jitted call, which every contender pays alike)
    tiny = jax.device_put(jnp.ones((4,), jnp.float32), dev)
    dispatch = _time(jax.jit(lambda v: v + 1), tiny, repeats=repeats)
    Ts, Ds = 1 << 8, 1
    Tl, Dl = 1 << 12, 16
    Dw = 64
    ts = max(_assoc_scan_time(Ts, Ds, backend, repeats) - dispatch, 1e-9)
    tl = max(_assoc_scan_time(Tl, Dl, backend, repeats) - dispatch, 1e-9)
    tw = max(_assoc_scan_time(Tl, Dw, backend, repeats) - dispatch, 1e-9)
    # t = L·levels(T) + E·T·2D from the first two (kept non-negative); then, net of the levels,
    # the two widths at T = 4096 give R and E of  t = L·levels(T) + R·T + E·T·2D  — unless noise
    # makes one of them non-positive, when R = 0 and E stays the two-point value.
    A = np.array([[_levels(Ts), Ts * 2 * Ds], [_levels(Tl), Tl * 2 * Dl]], float)
    L, E = np.linalg.solve(A, np.array([ts, tl]))
    if L <= 0 or E <= 0:
        L = max(L, ts / (2 * _levels(Ts)))
        E = max((tl - L * _levels(Tl)) / (Tl * 2 * Dl), tl / (4 * Tl * 2 * Dl))
    R = 0.0
    E_w = (tw - tl) / (Tl * 2 * (Dw - Dl))
    R_w = (tl - L * _levels(Tl)) / Tl - 2 * Dl * E_w
    if E_w > 0 and R_w > 0:
        R, E = R_w, E_w
    log(f"level_overhead {L:.3g} s, scan_row_time {R:.3g} s, scan_elem_time {E:.3g} s")
    # 5b. the same scan far beyond the cache: extra time per stored float per step
    if backend == "cpu":
        cache_bytes = min(_llc_bytes() or default.cache_bytes, MAX_CACHE_BYTES)
    else:
        cache_bytes = default.cache_bytes
    Tb, Db = 1 << 20, 16
    tb = max(_assoc_scan_time(Tb, Db, backend, max(1, repeats // 3)) - dispatch, 1e-9)
    spill = max(0.0, 1.0 - cache_bytes / (3.0 * Tb * 2 * Db * 4))
    E_big = max(tb - L * _levels(Tb) - R * Tb, 0.0) / (Tb * 2 * Db)
    scan_miss_time = max(E_big - E, 0.0) / spill if spill > 0 else 0.0
    log(f"cache_bytes    {cache_bytes:.3g} B, scan_miss_time {scan_miss_time:.3g} s")

    # 6. fixed cost of a non-fusable op (a small matmul) inside a sequential step
    Do, To = 16, 1 << 13
    per_op = {}
    for dt in (jnp.float32, jnp.complex64):
        a = jax.device_put(jnp.full((Do,), 0.9, dt), dev)
        Bm = jax.device_put(jnp.asarray(np.random.default_rng(3).standard_normal((Do, Do)), dt), dev)
        cplx = 4.0 if dt == jnp.complex64 else 1.0
        with_dot = _scan_per_step(lambda h, x: a * h + x.astype(dt) @ Bm, Do, To, backend, repeats, dt)
        without = _scan_per_step(lambda h, x: a * h + x.astype(dt), Do, To, backend, repeats, dt)
        per_op[dt] = max(with_dot - without - cplx * 2 * Do * Do / seq_flops, 0.0)
    op_overhead = per_op[jnp.float32]
    complex_op_factor = max(per_op[jnp.complex64] / op_overhead, 1.0) if op_overhead > 0 else 1.0
    log(f"op_overhead    {op_overhead:.3g} s, complex_op_factor {complex_op_factor:.3g}")

    # 7. fixed cost of autopar's parallel program beyond the bare scan
    parallel_overhead = _parallel_overhead(backend, repeats)
    log(f"parallel_overhead {parallel_overhead:.3g} s")

    # 8. cost per equation of a step's state-VJP inside a reverse lax.scan (the sequential adjoint)
    vjp_eqn_time = _vjp_eqn_time(backend, repeats, step_overhead, seq_flops)
    log(f"vjp_eqn_time   {vjp_eqn_time:.3g} s")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = costs.BackendConstants(
        step_overhead=float(step_overhead), seq_flops=float(seq_flops), par_flops=float(par_flops),
        level_overhead=float(L), bytes_per_s=float(bytes_per_s), scan_elem_time=float(E),
        op_overhead=float(op_overhead), complex_op_factor=float(complex_op_factor),
        parallel_overhead=float(parallel_overhead), vjp_eqn_time=float(vjp_eqn_time),
        cache_bytes=float(cache_bytes), scan_miss_time=float(scan_miss_time),
        loop_bytes_per_s=float(loop_bytes_per_s), row_op_time=float(default.row_op_time),
        scan_row_time=float(R), loop_kernel_bytes=float(default.loop_kernel_bytes),
        loop_thunk_time=float(default.loop_thunk_time),
        source=f"calibrated {stamp} on {costs.device_key(backend)}",
    )
    if save:
        path = costs.save_cached(backend, out)
        log(f"saved to {path}")
    return out
