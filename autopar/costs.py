"""Backend constants for the cost model, and a flop count of one step.

Defaults are rough measurements (see docs/benchmarks.md for the machines);
``autopar.calibrate`` may replace them with measurements on the user's machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _compat

__all__ = ["BackendConstants", "DEFAULTS", "constants_for", "step_flops"]


@dataclasses.dataclass(frozen=True)
class BackendConstants:
    """Per-backend constants of the cost model (seconds, flop/s)."""

    step_overhead: float  # fixed cost of one sequential lax.scan iteration
    seq_flops: float  # flop/s a sequential step achieves on small vectors
    par_flops: float  # flop/s of large vectorised (batched over T) work
    level_overhead: float  # fixed cost of one level of an associative scan
    bytes_per_s: float  # memory bandwidth for streamed arrays

    def replace(self, **kw) -> "BackendConstants":
        return dataclasses.replace(self, **kw)


DEFAULTS = {
    # measured on the 2-core CI machine (see benchmarks/calibrate output in docs/benchmarks.md)
    "cpu": BackendConstants(step_overhead=2.0e-7, seq_flops=2.0e9, par_flops=2.0e9, level_overhead=2.0e-5, bytes_per_s=4.0e9),
    # one kernel launch (or more) per sequential step; massive parallel throughput
    "gpu": BackendConstants(step_overhead=6.0e-6, seq_flops=1.0e10, par_flops=5.0e12, level_overhead=3.0e-5, bytes_per_s=2.0e12),
    "tpu": BackendConstants(step_overhead=6.0e-6, seq_flops=1.0e10, par_flops=5.0e12, level_overhead=3.0e-5, bytes_per_s=1.0e12),
}

_OVERRIDES: dict[str, BackendConstants] = {}


def constants_for(backend: str) -> BackendConstants:
    if backend in _OVERRIDES:
        return _OVERRIDES[backend]
    return DEFAULTS.get(backend, DEFAULTS["gpu"])


def set_constants(backend: str, constants: BackendConstants) -> None:
    _OVERRIDES[backend] = constants


def step_flops(jaxpr) -> float:
    """Approximate flops of one evaluation of ``jaxpr`` (elementwise = 1 per output element)."""
    total = 0.0
    jp = jaxpr.jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else jaxpr
    for eqn in jp.eqns:
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None:
            total += step_flops(sub)
            continue
        name = eqn.primitive.name
        out_size = sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in eqn.outvars if hasattr(v.aval, "shape"))
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            k = int(np.prod([eqn.invars[0].aval.shape[d] for d in lc], dtype=np.int64))
            total += 2.0 * out_size * max(k, 1)
        elif name in ("scan", "while"):
            for sub_j in _compat.jaxprs_in_params(eqn.params):
                total += step_flops(sub_j) * int(eqn.params.get("length", 1) or 1)
        else:
            in_size = max([int(np.prod(a.aval.shape, dtype=np.int64)) for a in eqn.invars if hasattr(a.aval, "shape")] or [0])
            total += max(out_size, in_size)
    return float(total)
