"""Precision-lowering equations: rounding is not affine.

``x.astype(bfloat16)``, ``lax.reduce_precision`` and a dot_general whose
``preferred_element_type`` is narrower than its operands round their result to a
coarser grid: ``round(a·h1 + b·h2) ≠ a·round(h1) + b·round(h2)``, so a cell that rounds an
h-dependent value is *not* affine in h, even though every JVP JAX computes treats the
rounding as the identity. (The linear solver composes J = "identity" maps and misses the
rounding: up to 0.6 off ``lax.scan`` on bfloat16 round trips.)

Every pass asks this module, so they agree:

* ``rounds(eqn)`` — the equation lowers the precision of one of its float operands: its
  float output has fewer mantissa bits or a narrower exponent range than a float operand
  (``convert_element_type`` to a narrower float, ``dot_general`` / ``conv`` with a narrow
  ``preferred_element_type``), or it is a ``reduce_precision`` to fewer bits than its dtype
  has. Converting to a wider or equal float (f32 → f64, f32 → f32, f32 → complex64) does
  not round. Float → integer conversions are not "rounding" here: the passes already treat
  integer values as step functions of h (piecewise-constant, zero derivative).
* ``rounding_for(rec)`` — the same predicate for one recurrence, with two exemptions:
  the casts the state layout itself inserts (``storage_casts``: the flat state vector is
  kept in a wider ``vec_dtype`` and each leaf is cast back to its own dtype, e.g. a
  bfloat16 leaf), and any rounding to a precision at least that of the most precise state
  leaf (a float32 cell computing in float64 and casting back to float32). Both round only
  to the precision the state is stored and compared in, as ``lax.scan`` does at every step.

Not modelled: a dot_general's ``precision`` parameter. With ``Precision.DEFAULT`` a float32
matmul on a GPU (TF32) or TPU (bfloat16 passes) rounds its operands inside the unit; the
analysis treats the arithmetic as exact (as it does every float operation), so a linear cell
stays linear — the solvers ask for HIGHEST precision in their own combines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autopar import _compat, primitives
from autopar.dtypes import is_inexact

__all__ = ["rounds", "narrower", "storage_casts", "rounding_for", "Rounding"]


def _finfo(dtype: Any):
    import jax.numpy as jnp

    return jnp.finfo(dtype)  # complex dtypes: the finfo of a component


def narrower(src: Any, dst: Any) -> bool:
    """Whether converting float ``src`` to float ``dst`` can round (fewer mantissa bits, or a
    narrower exponent range). False when either side is not a float type."""
    if not (is_inexact(src) and is_inexact(dst)):
        return False
    s, d = _finfo(src), _finfo(dst)
    return bool(d.nmant < s.nmant or d.maxexp < s.maxexp or d.minexp > s.minexp)


def _dtype(atom: Any):
    return getattr(getattr(atom, "aval", None), "dtype", None)


def _bits_below(fi, mantissa_bits: int, exponent_bits: int) -> bool:
    return bool(mantissa_bits < fi.nmant or exponent_bits < fi.nexp)


def rounds(eqn: Any, exempt: frozenset = frozenset(), floor: Any = None) -> bool:
    """Whether ``eqn`` rounds a float operand to a lower precision (see the module doc).

    ``exempt``: ids of equations never counted; ``floor``: a float dtype — rounding to a
    precision at least ``floor``'s is not counted."""
    name = eqn.primitive.name
    t = primitives.row(name)
    if t is None or not t.may_round or id(eqn) in exempt:  # (``may_round``: anything else keeps its dtype)
        return False
    if name == "reduce_precision":
        dt = _dtype(eqn.invars[0])
        if not is_inexact(dt):
            return False
        m, e = int(eqn.params["mantissa_bits"]), int(eqn.params["exponent_bits"])
        if not _bits_below(_finfo(dt), m, e):
            return False
        return floor is None or _bits_below(_finfo(floor), m, e)
    ins = [_dtype(a) for a in eqn.invars]
    for ov in eqn.outvars:
        od = _dtype(ov)
        if any(narrower(i, od) for i in ins) and (floor is None or narrower(floor, od)):
            return True
    return False


class Rounding:
    """``rounds`` bound to one recurrence's exemptions (see ``rounding_for``)."""

    def __init__(self, exempt: frozenset = frozenset(), floor: Any = None) -> None:
        self.exempt = frozenset(exempt)
        self.floor = floor

    def __call__(self, eqn: Any) -> bool:
        return rounds(eqn, self.exempt, self.floor)


def rounding_for(rec: Any) -> Rounding:
    """The rounding predicate of ``rec``: exempts its layout's casts and roundings to at least
    the precision of its most precise float state leaf."""
    floor = None
    try:
        dts = [l.dtype for l in rec.layout.diff_leaves if is_inexact(l.dtype)]
        for d in dts:
            if floor is None or narrower(d, floor):
                floor = d
    except Exception:  # noqa: BLE001 - a Recurrence-like object without a layout
        floor = None
    return Rounding(storage_casts(rec), floor)


#: What ``trace``'s state layout emits to cut the flat vector into leaves (a property of that code,
#: not of the primitives: a user's transpose or gather of h followed by a cast is *not* exempt).
_LAYOUT_MOVES = ("slice", "reshape", "squeeze", "expand_dims", "real", "copy", "copy_p", "split")


def storage_casts(rec: Any) -> frozenset:
    """ids of the top-level equations of ``rec.step_jaxpr`` that cast (slices of) the flat state
    vector back to a state leaf's own dtype (see the module doc)."""
    try:
        jp = rec.step_jaxpr.jaxpr
        leaf_dtypes = {np.dtype(l.dtype) for l in rec.layout.diff_leaves}
        state = jp.invars[rec.state_invar]
    except Exception:  # noqa: BLE001 - a Recurrence-like object without a layout: exempt nothing
        return frozenset()
    moved = {state}
    out = set()
    for eqn in jp.eqns:
        if not eqn.invars or _compat.is_literal(eqn.invars[0]) or eqn.invars[0] not in moved:
            continue
        name = eqn.primitive.name
        if name in _LAYOUT_MOVES:
            moved.update(eqn.outvars)
        elif name == "convert_element_type" and np.dtype(eqn.params["new_dtype"]) in leaf_dtypes:
            out.add(id(eqn))
    return frozenset(out)
