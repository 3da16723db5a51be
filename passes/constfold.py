"""Constant folding in numpy: values computable without h, x or user weights.

The interpreter (``interpret.propagate``) keeps, next to each domain's abstract value,
the concrete value of every variable computable from literals, ``iota`` and integer /
bool constants (index arrays such as ``jnp.array([1, 0, 3, 2])``), so that rules for
gather, scatter, dynamic slices, select and dot_general can be exact when their index
or mask operands are known. Float constants (weights) are never folded: the analysis
must hold for every value of them. Only a small set of exact primitives is evaluated,
in numpy (no XLA compilation), and results larger than ``MAX_FOLD`` elements are dropped.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from autopar import _compat, primitives

from .indexing import gather_positions

__all__ = ["fold", "MAX_FOLD", "foldable_const"]

MAX_FOLD = 1 << 20


def foldable_const(value: Any) -> np.ndarray | None:
    """The numpy value of a jaxpr constant if it may be folded (concrete integer / bool)."""
    try:
        if isinstance(value, _compat.Tracer):
            return None
    except Exception:  # pragma: no cover
        pass
    dt = getattr(value, "dtype", None)
    if dt is None or np.dtype(dt).kind not in "biu":
        return None
    if int(np.prod(np.shape(value), dtype=np.int64)) > MAX_FOLD:
        return None
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - not concrete
        return None


def _out_dtype(eqn, i=0):
    return np.dtype(eqn.outvars[i].aval.dtype)


def _binary(fn):
    def f(eqn, vals):
        return [np.asarray(fn(*vals)).astype(_out_dtype(eqn))]

    return f


def _div(a, b):
    if np.dtype(np.result_type(a, b)).kind in "iu":
        q = np.abs(a) // np.where(b == 0, 1, np.abs(b))
        return np.sign(a) * np.sign(b) * q
    return a / b


def _rem(a, b):
    if np.dtype(np.result_type(a, b)).kind in "iu":
        return np.fmod(a, np.where(b == 0, 1, b))
    return np.fmod(a, b)


def _select_n(eqn, vals):
    pred, *cases = vals
    pred = np.asarray(pred).astype(np.int64)
    return [np.choose(pred, [np.broadcast_to(c, np.shape(pred) or np.shape(c)) for c in cases]).astype(_out_dtype(eqn))]


def _convert(eqn, vals):
    """Exact conversions only: numpy and XLA agree on integer → integer (wraparound) and on
    widening float casts; a narrowing float cast (double rounding, flush-to-zero) or a float →
    integer cast of a non-finite / out-of-range value (implementation-defined) is not folded."""
    from .precision import narrower

    x = np.asarray(vals[0])
    src, dst = eqn.invars[0].aval.dtype, np.dtype(eqn.params["new_dtype"])
    if narrower(src, dst):
        return None
    if x.dtype.kind in "fc" and dst.kind in "iub":
        if x.dtype.kind == "c" or not np.all(np.isfinite(x)):
            return None
        if dst.kind in "iu":
            info = np.iinfo(dst)
            if x.size and (x.min() < info.min or x.max() > info.max):
                return None
    return [x.astype(dst)]


def _broadcast_in_dim(eqn, vals):
    x = np.asarray(vals[0])
    shape = tuple(eqn.params["shape"])
    expanded = [1] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        expanded[d] = x.shape[i]
    return [np.broadcast_to(x.reshape(expanded), shape)]


def _reshape(eqn, vals):
    return [np.asarray(vals[0]).reshape(tuple(eqn.outvars[0].aval.shape))]


def _transpose(eqn, vals):
    return [np.transpose(vals[0], tuple(eqn.params["permutation"]))]


def _slice(eqn, vals):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    return [np.asarray(vals[0])[tuple(slice(s, l, st) for s, l, st in zip(p["start_indices"], p["limit_indices"], strides))]]


def _concatenate(eqn, vals):
    return [np.concatenate([np.asarray(v) for v in vals], axis=eqn.params["dimension"])]


def _rev(eqn, vals):
    return [np.flip(vals[0], axis=tuple(eqn.params["dimensions"]))]


def _iota(eqn, vals):
    p = eqn.params
    shape = tuple(p["shape"])
    d = p["dimension"]
    r = np.arange(shape[d]).reshape([-1 if i == d else 1 for i in range(len(shape))])
    return [np.broadcast_to(r, shape).astype(np.dtype(p["dtype"]))]


def _reduce(fn):
    def f(eqn, vals):
        return [np.asarray(fn(vals[0], axis=tuple(eqn.params["axes"]))).astype(_out_dtype(eqn))]

    return f


def _integer_pow(eqn, vals):
    return [np.asarray(np.power(vals[0], eqn.params["y"])).astype(_out_dtype(eqn))]


def _clamp(eqn, vals):
    lo, x, hi = vals
    return [np.clip(x, lo, hi).astype(_out_dtype(eqn))]


def _pad(eqn, vals):
    x, pv = np.asarray(vals[0]), vals[1]
    cfg = eqn.params["padding_config"]
    if any(lo < 0 or hi < 0 for lo, hi, _ in cfg):
        return None
    out = np.full(tuple(eqn.outvars[0].aval.shape), pv, dtype=_out_dtype(eqn))
    idx = tuple(slice(lo, lo + (n - 1) * (it + 1) + 1 if n else lo, it + 1) for (lo, hi, it), n in zip(cfg, x.shape))
    out[idx] = x
    return [out]


def _gather(eqn, vals):
    operand, indices = np.asarray(vals[0]), vals[1]
    p = eqn.params
    pos = gather_positions(operand.shape, indices, p["dimension_numbers"], p["slice_sizes"], p["mode"],
                           eqn.outvars[0].aval.shape)
    if pos is None:
        return None
    fill = p.get("fill_value")
    fill = 0 if fill is None else fill
    flat = operand.reshape(-1)
    out = np.where(pos >= 0, flat[np.maximum(pos, 0)] if flat.size else fill, fill)
    return [out.astype(_out_dtype(eqn))]


def _cumulative(fn):
    def f(eqn, vals):
        x = np.asarray(vals[0])
        ax, rev = eqn.params["axis"], eqn.params.get("reverse", False)
        if rev:
            x = np.flip(x, ax)
        y = fn(x, axis=ax)
        return [np.flip(y, ax) if rev else y]

    return f


def _split(eqn, vals):
    x = np.asarray(vals[0])
    ax = eqn.params["axis"]
    cuts = np.cumsum(eqn.params["sizes"])[:-1]
    return list(np.split(x, cuts, axis=ax))


def _ident(eqn, vals):
    return [np.asarray(vals[0])]


#: The ``fold`` slots of the trait table: ``rule(eqn, numpy values) -> numpy outputs | None``.
_FOLDERS: dict[str, Callable] = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "div": _binary(_div), "rem": _binary(_rem), "max": _binary(np.maximum), "min": _binary(np.minimum),
    "neg": lambda e, v: [np.negative(v[0])], "abs": lambda e, v: [np.abs(v[0])], "sign": lambda e, v: [np.sign(v[0])],
    "lt": _binary(np.less), "le": _binary(np.less_equal), "gt": _binary(np.greater), "ge": _binary(np.greater_equal),
    "eq": _binary(np.equal), "ne": _binary(np.not_equal),
    "and": _binary(np.bitwise_and), "or": _binary(np.bitwise_or), "xor": _binary(np.bitwise_xor),
    "not": lambda e, v: [np.invert(v[0]) if np.asarray(v[0]).dtype != bool else np.logical_not(v[0])],
    "select_n": _select_n, "convert_element_type": _convert, "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape, "squeeze": _reshape, "expand_dims": _reshape, "transpose": _transpose,
    "slice": _slice, "concatenate": _concatenate, "rev": _rev, "iota": _iota,
    "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max), "reduce_min": _reduce(np.min),
    "reduce_and": _reduce(np.all), "reduce_or": _reduce(np.any), "reduce_prod": _reduce(np.prod),
    "integer_pow": _integer_pow, "clamp": _clamp, "pad": _pad, "gather": _gather,
    "cumsum": _cumulative(np.cumsum), "cumprod": _cumulative(np.cumprod),
    "cummax": _cumulative(np.maximum.accumulate), "cummin": _cumulative(np.minimum.accumulate),
    "split": _split, "copy": _ident, "copy_p": _ident, "floor": lambda e, v: [np.floor(v[0])],
    "ceil": lambda e, v: [np.ceil(v[0])],
}
for _name, _rule in _FOLDERS.items():
    primitives.defrule("fold", _name)(_rule)
del _name, _rule


def fold(eqn: Any, vals: list) -> list | None:
    """Concrete outputs of ``eqn`` from concrete inputs, or None if not folded."""
    t = primitives.row(eqn.primitive.name)
    fn = None if t is None else t.rules.get("fold")
    if fn is None:
        return None
    total = sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in eqn.outvars)
    if total > MAX_FOLD:
        return None
    try:
        with np.errstate(all="ignore"):
            outs = fn(eqn, [np.asarray(v) for v in vals])
    except Exception:  # noqa: BLE001 - folding is an optimisation; never fail the analysis
        return None
    if outs is None or len(outs) != len(eqn.outvars):
        return None
    res = []
    for o, var in zip(outs, eqn.outvars):
        o = np.asarray(o)
        if tuple(o.shape) != tuple(var.aval.shape):
            return None
        res.append(o.astype(np.dtype(var.aval.dtype)) if o.dtype != np.dtype(var.aval.dtype) else o)
    return res
