"""Process-wide settings: which backend's constants the planner uses, default solver and backward.

Three settings, each read from (first match wins) an active ``override(...)`` block, a value
set with ``set(...)``, the environment variable, then the built-in default:

=====================  ===========================  ==========================================
setting                environment variable         meaning
=====================  ===========================  ==========================================
``planner_backend``    ``AUTOPAR_PLANNER_BACKEND``  constants the planner prices candidates
                                                    with (``None``: ``jax.default_backend()``);
                                                    programs still run on the real backend
``solver``             ``AUTOPAR_SOLVER``           default ``solver=`` of ``parallelize`` /
                                                    ``scan`` (built-in default ``"auto"``)
``backward``           ``AUTOPAR_BACKWARD``         default ``backward=`` option (``"auto"``)
=====================  ===========================  ==========================================

An explicit argument (``parallelize(cell, solver="deer")``, ``make_plan(..., backend="cpu")``)
always wins over these settings. The environment is read at every lookup, so setting a variable
in-process takes effect for the next call (cached plans are keyed by the settings in force).

    with autopar.config.override(planner_backend="gpu", solver="deer"):
        hs = autopar.parallelize(cell)(h0, xs)    # planned with the GPU constants, solved by DEER
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from .adjoint import backward_modes
from .solvers import solver_names

__all__ = ["planner_backend", "solver", "backward", "override", "set", "reset", "snapshot", "resolve_backend",
           "PLANNER_BACKENDS", "ENV"]

#: Backends whose constants the planner knows (``autopar.costs.constants_for``).
PLANNER_BACKENDS = ("cpu", "gpu", "tpu", "cuda", "rocm")

#: Environment variable of each setting.
ENV = {"planner_backend": "AUTOPAR_PLANNER_BACKEND", "solver": "AUTOPAR_SOLVER", "backward": "AUTOPAR_BACKWARD"}

_DEFAULTS: dict[str, Any] = {"planner_backend": None, "solver": "auto", "backward": "auto"}

_set_values: dict[str, Any] = {}
_local = threading.local()


def _allowed(name: str) -> tuple[str, ...]:
    if name == "planner_backend":
        return PLANNER_BACKENDS
    if name == "solver":
        return ("auto", *solver_names())
    return backward_modes()


def _validate(name: str, value: Any, source: str) -> Any:
    if name not in _DEFAULTS:
        raise TypeError(f"unknown autopar.config setting {name!r}; settings: {sorted(_DEFAULTS)}.")
    if value is None and name == "planner_backend":
        return None
    allowed = _allowed(name)
    if isinstance(value, str):
        value = value.strip().lower() if name == "planner_backend" else value.strip()
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"autopar.config.{name} ({source}) must be one of {list(allowed)}"
            + (" or None" if name == "planner_backend" else "") + f"; got {value!r}."
        )
    return value


def _stack() -> list[dict[str, Any]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _get(name: str) -> Any:
    for frame in reversed(_stack()):
        if name in frame:
            return frame[name]
    if name in _set_values:
        return _set_values[name]
    env = os.environ.get(ENV[name], "")
    if env.strip():
        return _validate(name, env, f"from ${ENV[name]}")
    return _DEFAULTS[name]


def planner_backend() -> str | None:
    """The backend whose constants the planner uses, or None for ``jax.default_backend()``."""
    return _get("planner_backend")


def resolve_backend(backend: str | None = None) -> str:
    """The backend the planner prices with: ``backend`` if given, else the setting, else JAX's."""
    if backend:
        return backend
    b = planner_backend()
    if b:
        return b
    import jax

    return jax.default_backend()


def solver() -> str:
    """Default ``solver=`` of ``parallelize`` and ``scan`` when none is passed."""
    return _get("solver")


def backward() -> str:
    """Default ``backward=`` option when none is passed."""
    return _get("backward")


def snapshot() -> tuple:
    """The settings now in force, hashable (part of the plan-cache keys)."""
    return tuple((k, _get(k)) for k in sorted(_DEFAULTS))


def set(**settings: Any) -> None:  # noqa: A001 - module-level API: autopar.config.set(...)
    """Set settings for this process (beats the environment; ``override`` beats this).
    Pass ``None`` to go back to the environment / default for that setting."""
    checked = {k: _validate(k, v, "passed to set()") for k, v in settings.items() if v is not None}
    for k, v in settings.items():
        if v is None:
            _validate(k, "auto" if k != "planner_backend" else None, "passed to set()")  # name check only
            _set_values.pop(k, None)
    _set_values.update(checked)


def reset() -> None:
    """Forget every ``set(...)`` value (the environment and defaults apply again)."""
    _set_values.clear()


@contextlib.contextmanager
def override(**settings: Any) -> Iterator[None]:
    """Within the block, use these settings (this thread; nested blocks stack).

    ``planner_backend=None`` inside a block means "JAX's default backend" (ignoring the
    environment)."""
    frame = {}
    for k, v in settings.items():
        frame[k] = _validate(k, v, "passed to override()") if v is not None or k == "planner_backend" else _DEFAULTS[k]
    _stack().append(frame)
    try:
        yield
    finally:
        _stack().pop()
