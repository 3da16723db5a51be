"""Input validation with errors written for humans.

Every check here runs before any compilation or computation, and every message
names the argument (or leaf path), what was received, and what to do.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["AutoparError", "FallbackWarning", "validate_leaves", "check_same_structure", "raise_for_tracing_error"]


class AutoparError(ValueError):
    """Raised for invalid use of autopar (bad inputs, unsupported options)."""


class FallbackWarning(UserWarning):
    """A solver the user forced did not converge and its fallback chain produced the result.

    The result is still right (the chain ends in the exact sequential solver); the warning says
    the forced solver bought nothing. Filter it with
    ``warnings.simplefilter("ignore", autopar.FallbackWarning)``.
    """


def _is_array_like(leaf: Any) -> bool:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
        return True
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def validate_leaves(tree: Any, argname: str) -> None:
    """Every leaf of ``tree`` must be an array or a number."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not _is_array_like(leaf):
            raise TypeError(
                f"`{argname}{jax.tree_util.keystr(path)}` is a {type(leaf).__name__} ({leaf!r:.60}), "
                "but every leaf must be an array or a number. Convert it with jnp.asarray, or "
                "register your container as a pytree so its fields become leaves."
            )


def check_same_structure(h0: Any, out_shape: Any, treedef: Any) -> None:
    """The cell's output must match ``h0`` in structure, shape and dtype, leaf by leaf."""
    out_treedef = jax.tree_util.tree_structure(out_shape)
    if out_treedef != treedef:
        raise TypeError(
            "the cell must return a new state with the same pytree structure as `h0`.\n"
            f"  h0 structure:          {treedef}\n  cell output structure: {out_treedef}\n"
            "Return the full state (e.g. a tuple (c, h) for an LSTM), not outputs or extra values; "
            "with autopar.scan return (carry, y)."
        )
    for (path, leaf), out in zip(jax.tree_util.tree_leaves_with_path(h0), jax.tree_util.tree_leaves(out_shape)):
        shape, dtype = np.shape(leaf), jax.numpy.asarray(leaf).dtype
        shape_ok = tuple(out.shape) == tuple(shape)
        dtype_ok = np.dtype(out.dtype) == np.dtype(dtype)
        if shape_ok and dtype_ok:
            continue
        where = f"h0{jax.tree_util.keystr(path)}"
        got, want = f"{np.dtype(out.dtype).name}{list(out.shape)}", f"{np.dtype(dtype).name}{list(shape)}"
        if not shape_ok:
            advice = (
                f"its shape changed from {tuple(shape)} to {tuple(out.shape)}. A recurrence must return each "
                "state leaf in the shape it received (check slicing, reductions and broadcasting against x; "
                "a per-step output that is not state belongs in autopar.scan's y)"
            )
            if not dtype_ok:
                advice += f", and in its dtype ({np.dtype(dtype).name}, not {np.dtype(out.dtype).name})"
        else:
            advice = (
                f"its dtype changed from {np.dtype(dtype).name} to {np.dtype(out.dtype).name}. A recurrence must "
                "keep each state leaf's shape and dtype: cast the new state with .astype(h.dtype), or build "
                f"h0 in the dtype the cell computes in ({np.dtype(out.dtype).name})"
            )
        raise TypeError(f"the cell's new state at `{where}` is {got}, but {where} (the state it was given) is "
                        f"{want}: {advice}.")


_CONTROL_FLOW_ERRORS = (
    jax.errors.TracerBoolConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
)


def raise_for_tracing_error(err: Exception, cell_name: str) -> None:
    """Re-raise a tracing failure caused by Python control flow on traced values, explained."""
    if isinstance(err, _CONTROL_FLOW_ERRORS):
        raise AutoparError(
            f"autopar traces `{cell_name}` abstractly (once per input signature), so Python control "
            "flow cannot depend on the values of h or x. The traceback below points at the line: "
            "replace `if`/`while`/`int(...)` on traced values with jnp.where(cond, a, b), "
            "lax.cond or lax.select.\n"
            f"JAX said: {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
