"""Shared timing helpers for the benchmarks (not a test module).

Every timing blocks until the result is ready, warms up first (compilation is
excluded), and reports the median of repeats. ``side_by_side`` interleaves the
contenders round-robin so that the ratios between them are measured under the
same machine load — on a shared machine the absolute numbers drift, the ratios
much less.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

import jax

__all__ = ["block", "time_fn", "side_by_side", "machine_description", "Timing"]


def block(x: Any) -> Any:
    """``jax.block_until_ready`` on every leaf of ``x``."""
    return jax.block_until_ready(x)


class Timing(dict):
    """name -> median seconds, plus ``samples`` (name -> list of seconds)."""

    samples: dict


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` (blocked until ready) over ``repeats`` runs after ``warmup`` runs.

    With ``min_time`` > 0 each sample loops ``fn`` until that much time has passed and
    reports the time per call (useful for sub-millisecond calls).
    """
    for _ in range(warmup):
        block(fn())
    out = []
    for _ in range(repeats):
        out.append(_one_sample(fn, min_time))
    return statistics.median(out)


def _one_sample(fn, min_time):
    n, t0 = 0, time.perf_counter()
    while True:
        block(fn())
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def side_by_side(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1,
                 min_time: float = 0.0, stat: str = "median") -> Timing:
    """Time several contenders in one run, interleaved round-robin; median seconds per name.

    Each contender is warmed up (compiled) first; then every round times each contender
    once, in turn, so slow drifts in machine load hit all of them alike. ``stat`` is
    "median" (default) or "min" (on a shared machine, interference only ever adds time,
    so the minimum is the steadier estimate of a program's own cost).
    """
    reduce = {"median": statistics.median, "min": min}[stat]
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(_one_sample(fn, min_time))
    res = Timing({k: reduce(v) for k, v in samples.items()})
    res.samples = samples
    return res


def machine_description() -> str:
    """One line naming the machine and backend the numbers come from."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    cpu = platform.processor() or platform.machine()
    return (f"{jax.default_backend()} ({kind}), {os.cpu_count()} cores ({cpu}), "
            f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
