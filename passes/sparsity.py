"""Element-level dependency analysis (sparsity of J = ∂f/∂h) by abstract interpretation.

Each intermediate value of shape S carries a boolean array of shape S + (D,):
entry [..., j] is True when that element *may* depend on state element j
(``None`` stands for "depends on no state element"). The analysis is global:
it follows the dataflow of the jaxpr, never the values of h or x, so the
pattern it reports holds at every point — it is a superset of the nonzeros of
J wherever J is evaluated. Primitives without a rule are treated as dense on
their operands and reported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Pass
from .interpret import Domain, propagate

__all__ = ["SparsityDomain", "SparsityPass", "dependency", "ELEMENTWISE"]

#: Primitives that act element by element (operands broadcast from scalars).
ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp complex conj convert_element_type
    copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma imag integer_pow
    is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real reduce_precision
    rem round rsqrt select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
    stop_gradient sub tan tanh xor population_count clz""".split()
)


class SparsityDomain(Domain):
    name = "sparsity"

    def __init__(self, n_state: int) -> None:
        super().__init__()
        self.D = n_state
        self.rules = dict(RULES)

    def const(self, aval: Any) -> Any:
        return None

    def is_const(self, value: Any) -> bool:
        return value is None

    def dense(self, shape: Sequence[int], ins: Sequence[Any]) -> Any:
        """Every output element depends on every state element any operand depends on."""
        acc = np.zeros((self.D,), bool)
        for v in ins:
            if v is not None:
                acc |= v.reshape(-1, self.D).any(axis=0)
        if not acc.any():
            return None
        return np.broadcast_to(acc, tuple(shape) + (self.D,)).copy()

    def default(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        return [self.dense(v.aval.shape, ins) for v in eqn.outvars]

    def full(self, value: Any, shape: Sequence[int]) -> np.ndarray:
        if value is None:
            return np.zeros(tuple(shape) + (self.D,), bool)
        return value


# ---- rules ------------------------------------------------------------------------------
def _elementwise(dom: SparsityDomain, eqn, ins):
    shape = tuple(eqn.outvars[0].aval.shape)
    acc = None
    for v in ins:
        if v is None:
            continue
        v = np.broadcast_to(v, shape + (dom.D,))
        acc = v.copy() if acc is None else acc | v
    return [acc if acc is None else acc.copy() for _ in eqn.outvars]


def _broadcast_in_dim(dom, eqn, ins):
    x = ins[0]
    shape = tuple(eqn.params["shape"])
    bdims = tuple(eqn.params["broadcast_dimensions"])
    expanded = [1] * len(shape)
    for i, d in enumerate(bdims):
        expanded[d] = x.shape[i]
    return [np.broadcast_to(x.reshape(tuple(expanded) + (dom.D,)), shape + (dom.D,)).copy()]


def _reshape_like_out(dom, eqn, ins):
    return [ins[0].reshape(tuple(eqn.outvars[0].aval.shape) + (dom.D,))]


def _transpose(dom, eqn, ins):
    perm = tuple(eqn.params["permutation"])
    return [ins[0].transpose(perm + (len(perm),))]


def _slice(dom, eqn, ins):
    start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides") or (1,) * len(start)
    idx = tuple(slice(s, l, st) for s, l, st in zip(start, limit, strides))
    return [ins[0][idx].copy()]


def _concatenate(dom, eqn, ins):
    axis = eqn.params["dimension"]
    parts = [dom.full(v, a.aval.shape) for v, a in zip(ins, eqn.invars)]
    return [np.concatenate(parts, axis=axis)]


def _pad(dom, eqn, ins):
    x, padval = ins
    operand_shape = eqn.invars[0].aval.shape
    out_shape = tuple(eqn.outvars[0].aval.shape)
    x = dom.full(x, operand_shape)
    out = np.zeros(out_shape + (dom.D,), bool)
    idx = []
    for (lo, hi, interior), n in zip(eqn.params["padding_config"], operand_shape):
        start = lo
        stop = lo + (n - 1) * (interior + 1) + 1 if n else lo
        idx.append(slice(start, stop, interior + 1))
    # negative low padding crops: fall back to the conservative rule
    if any(lo < 0 or hi < 0 for lo, hi, _ in eqn.params["padding_config"]):
        return dom.default(eqn, ins)
    out[tuple(idx)] = x
    if padval is not None:
        out |= np.broadcast_to(padval, out.shape)
    return [out]


def _rev(dom, eqn, ins):
    return [np.flip(ins[0], axis=tuple(eqn.params["dimensions"])).copy()]


def _reduce(dom, eqn, ins):
    axes = tuple(eqn.params["axes"])
    return [ins[0].any(axis=axes)]


def _cumulative(dom, eqn, ins):
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    x = ins[0]
    if reverse:
        x = np.flip(x, axis=axis)
    out = np.logical_or.accumulate(x, axis=axis)
    if reverse:
        out = np.flip(out, axis=axis)
    return [out.copy()]


def _dot_general(dom, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_aval, rhs_aval = eqn.invars[0].aval, eqn.invars[1].aval
    lhs, rhs = dom.full(ins[0], lhs_aval.shape), dom.full(ins[1], rhs_aval.shape)
    lfree = [d for d in range(lhs_aval.ndim) if d not in lc and d not in lb]
    rfree = [d for d in range(rhs_aval.ndim) if d not in rc and d not in rb]
    D = dom.D
    l = lhs.transpose(tuple(lb) + tuple(lfree) + tuple(lc) + (lhs_aval.ndim,))
    r = rhs.transpose(tuple(rb) + tuple(rfree) + tuple(rc) + (rhs_aval.ndim,))
    nb = len(lb)
    bshape = l.shape[:nb]
    lf = int(np.prod([lhs_aval.shape[d] for d in lfree], dtype=np.int64))
    rf = int(np.prod([rhs_aval.shape[d] for d in rfree], dtype=np.int64))
    lk = l.reshape(bshape + (lf, -1, D)).any(axis=-2)  # (B, lf, D)
    rk = r.reshape(bshape + (rf, -1, D)).any(axis=-2)  # (B, rf, D)
    out = lk[..., :, None, :] | rk[..., None, :, :]
    return [out.reshape(tuple(eqn.outvars[0].aval.shape) + (D,))]


def _select_and_gather_like_conservative(dom, eqn, ins):
    return dom.default(eqn, ins)


RULES = {name: _elementwise for name in ELEMENTWISE}
RULES.update(
    broadcast_in_dim=_broadcast_in_dim,
    reshape=_reshape_like_out,
    squeeze=_reshape_like_out,
    expand_dims=_reshape_like_out,
    transpose=_transpose,
    slice=_slice,
    concatenate=_concatenate,
    pad=_pad,
    rev=_rev,
    reduce_sum=_reduce,
    reduce_max=_reduce,
    reduce_min=_reduce,
    reduce_prod=_reduce,
    reduce_and=_reduce,
    reduce_or=_reduce,
    argmax=_reduce,
    argmin=_reduce,
    cumsum=_cumulative,
    cumprod=_cumulative,
    cummax=_cumulative,
    cummin=_cumulative,
    cumlogsumexp=_cumulative,
    dot_general=_dot_general,
)


def dependency(rec: Any) -> tuple[list[Any], set[str]]:
    """Per-output dependency arrays of ``rec.step_jaxpr`` on the flat state vector."""
    dom = SparsityDomain(rec.size)
    jp = rec.step_jaxpr
    ins: list[Any] = [None] * len(jp.jaxpr.invars)
    ins[rec.state_invar] = np.eye(rec.size, dtype=bool)
    outs = propagate(jp, ins, dom)
    return outs, set(dom.unknown)


class SparsityPass(Pass):
    """Provides ``sparsity`` (D × D bool: J[i, j] may be nonzero) and ``conservative``."""

    name = "sparsity"
    provides = ("sparsity", "conservative", "discrete_reads_float")

    def run(self, rec, facts):
        outs, unknown = dependency(rec)
        D = rec.size
        S = outs[0] if outs[0] is not None else np.zeros((D, D), bool)
        disc = any(o is not None and o.any() for o in outs[1:])
        return {"sparsity": np.asarray(S, bool).reshape(D, D), "conservative": sorted(unknown), "discrete_reads_float": disc}
