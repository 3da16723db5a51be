"""Element-level dependency analysis (sparsity of J = ∂f/∂h) by abstract interpretation.

Each intermediate value of shape S carries a packed bitset of shape S + (W,) (see
``bits``): bit j of element e is set when ∂e/∂h_j *may* be nonzero (``None`` stands for
"depends on no state element"). The analysis follows the dataflow of the jaxpr, never
the values of h or x, so the pattern holds at every point: it is a superset of the
nonzeros of J wherever J is evaluated (with JAX's derivative conventions).

Precision where it matters:

* integer / bool values carry no derivative (comparisons, argmax, indices), so the
  predicate of ``select_n``, a cond index or gather indices add nothing; ``floor``,
  ``ceil``, ``round``, ``sign`` and ``stop_gradient`` have zero derivative;
* gather / scatter / dynamic_slice / dynamic_update_slice / select_n / mul /
  dot_general are exact when their index, mask or matrix operand is a *known*
  constant (folded from literals, iota and integer constants: see ``constfold``), and
  conservative (dense over the operand) otherwise;
* nested jaxprs recurse; cond joins its branches; scan / while iterate to a fixpoint;
* a ``custom_jvp_call`` is differentiated by JAX with its JVP rule, not its primal (a
  straight-through ``round`` has a zero primal derivative and an identity rule): its
  pattern is the union of the primal's and of the rule's tangent dependencies, and dense
  over its operands when the rule cannot be obtained. ``custom_vjp_call`` follows its
  primal (what the forward problem and jax.jvp of the primal see); the h-dependent ones
  are listed in the ``custom_vjp`` fact, since their VJP is *not* the primal's.

Every rule's result is brought to the full shape ``aval.shape + (W,)`` (``_normalise``):
rules may return a value that only broadcasts to it (a scalar's dependencies times a
vector), and later rules index axes of the full shape.

Primitives without a rule are treated as dense on their operands and reported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from autopar import _compat, primitives
from autopar.dtypes import is_inexact
from . import bits
from .base import Pass
from .indexing import dynamic_slice_starts, gather_positions, scatter_positions
from .interpret import Domain, propagate

__all__ = ["SparsityDomain", "SparsityPass", "dependency"]

class SparsityDomain(Domain):
    name = "sparsity"

    def __init__(self, n_state: int) -> None:
        super().__init__()
        self.D = n_state
        self.W = bits.words(n_state)
        #: names of h-dependent custom_vjp / custom_jvp calls met (in order, without repeats).
        self.custom_vjp: dict[str, None] = {}
        self.custom_jvp: dict[str, None] = {}

    def family_rule(self, t):
        if t.zero_derivative:
            return _zero_deriv
        return _FAMILY.get(t.dataflow)

    @staticmethod
    def user_rule(name: str, spec: Any):
        """A ``register_rule(sparsity=...)`` spec as a rule of this domain (see ``passes.rules``)."""
        if spec == "elementwise":
            return _elementwise
        if spec == "dense":
            return lambda dom, eqn, ins: dom.default(eqn, ins)
        if spec == "zero":
            return _zero_deriv

        def rule(dom, eqn, ins):
            deps = [None if v is None else bits.to_bool(v, a.aval.shape, dom.D) for v, a in zip(ins, eqn.invars)]
            res = spec(eqn, deps)
            if not isinstance(res, (list, tuple)) or len(res) != len(eqn.outvars):
                raise ValueError(f"user sparsity rule for {name!r} must return a list of {len(eqn.outvars)} values "
                                 f"(one per output); got {type(res).__name__}.")
            outs = []
            for r, var in zip(res, eqn.outvars):
                if r is None:
                    outs.append(None)
                    continue
                r = np.asarray(r, bool)
                want = tuple(var.aval.shape) + (dom.D,)
                if r.shape != want:
                    raise ValueError(f"user sparsity rule for {name!r} returned shape {r.shape}; expected {want} "
                                     "(output shape + (D,)).")
                outs.append(bits.from_bool(r, dom.D))
            return outs

        return rule

    # ---- lattice -----------------------------------------------------------------
    def const(self, aval: Any) -> Any:
        return None

    def is_const(self, value: Any) -> bool:
        return value is None

    def join(self, a, b):
        return bits.union(a, b)

    def equal(self, a, b):
        if a is None or b is None:
            return a is None and b is None
        return a is b or bool(np.array_equal(a, b))

    def widen(self, value, aval, ins):
        return self.dense(aval.shape, ins)

    def unstack(self, value, aval):
        return None if value is None else bits.reduce_axes(value, (0,))

    def stack(self, value, aval):
        return None if value is None else bits.broadcast(value[None], aval.shape)

    # ---- helpers ------------------------------------------------------------------
    def dense(self, shape: Sequence[int], ins: Sequence[Any]) -> Any:
        """Every output element depends on every state element any operand depends on."""
        acc = None
        for v in ins:
            if v is not None:
                r = bits.reduce_axes(v.reshape(-1, self.W), (0,))
                acc = r if acc is None else acc | r
        if acc is None or not acc.any():
            return None
        return bits.broadcast(acc, shape)

    def default(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        return [self.dense(v.aval.shape, ins) for v in eqn.outvars]

    def full(self, value: Any, shape: Sequence[int]) -> np.ndarray:
        if value is None:
            return bits.zeros(shape, self.D)
        return bits.broadcast(value, shape)

    def enters(self, eqn, ins):
        if _compat.is_custom_vjp(eqn) and any(v is not None for v in ins):
            self.custom_vjp[_compat.call_name(eqn)] = None
        return super().enters(eqn, ins)

    def apply(self, eqn, ins):
        outs = super().apply(eqn, ins)
        # Integer / bool values carry no derivative.
        return [None if (o is None or not _inexact(v.aval)) else self._normalise(o, v.aval)
                for o, v in zip(outs, eqn.outvars)]

    def _normalise(self, value, aval):
        want = tuple(getattr(aval, "shape", ())) + (self.W,)
        value = np.asarray(value)
        if value.shape == want:
            return value
        if value.ndim == 0 or value.shape[-1] != self.W:
            raise ValueError(f"sparsity rule returned a value of shape {value.shape} for an output of shape "
                             f"{want[:-1]} (expected {want})")
        return np.broadcast_to(value, want)


def _inexact(aval) -> bool:
    dt = getattr(aval, "dtype", None)
    return is_inexact(dt)


def _shape(eqn, i=0):
    return tuple(eqn.outvars[i].aval.shape)


# ---- rules (family rules in _FAMILY, per-primitive slots filled with primitives.defrule) ----------
def _elementwise(dom: SparsityDomain, eqn, ins):
    """Family ``elementwise``: output element e depends on what element e of each operand does."""
    acc = bits.union(*ins)  # (``apply`` brings it to each output's full shape)
    return [acc for _ in eqn.outvars]


@primitives.defrule("sparsity", "select_n")
def _select_n(dom, eqn, ins):
    """Exact when the predicate is known: element e reads the case it selects."""
    pred, cases = dom.known_in[0], ins[1:]
    if pred is None:
        return [bits.union(*cases)]
    shape = _shape(eqn)
    sel = np.broadcast_to(np.asarray(pred).astype(np.int64), shape)
    acc = None
    for k, c in enumerate(cases):
        if c is None:
            continue
        m = (sel == k)[..., None]
        part = np.where(m, bits.broadcast(c, shape), np.uint64(0))
        acc = part if acc is None else acc | part
    return [acc]


@primitives.defrule("sparsity", "mul")
def _mul(dom, eqn, ins):
    """Elementwise, and exact where a known operand is zero."""
    out = bits.union(*ins)
    if out is None:
        return [None]
    shape = _shape(eqn)
    for v, k in zip(ins, dom.known_in):
        if k is not None and v is None:
            nz = np.broadcast_to(np.asarray(k) != 0, shape)[..., None]
            out = np.where(nz, bits.broadcast(out, shape), np.uint64(0))
    return [out]


def _broadcast_in_dim(dom, eqn, ins):
    x = ins[0]
    shape = tuple(eqn.params["shape"])
    expanded = [1] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        expanded[d] = x.shape[i]
    return [bits.broadcast(x.reshape(tuple(expanded) + (dom.W,)), shape)]


def _reshape_like_out(dom, eqn, ins):
    return [ins[0].reshape(_shape(eqn) + (dom.W,))]


def _transpose(dom, eqn, ins):
    perm = tuple(eqn.params["permutation"])
    return [ins[0].transpose(perm + (len(perm),))]


def _slice(dom, eqn, ins):
    start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides") or (1,) * len(start)
    idx = tuple(slice(s, l, st) for s, l, st in zip(start, limit, strides))
    return [ins[0][idx]]


def _concatenate(dom, eqn, ins):
    axis = eqn.params["dimension"]
    parts = [dom.full(v, a.aval.shape) for v, a in zip(ins, eqn.invars)]
    return [np.concatenate(parts, axis=axis)]


def _pad(dom, eqn, ins):
    x, padval = ins
    cfg = eqn.params["padding_config"]
    if any(lo < 0 or hi < 0 for lo, hi, _ in cfg):
        return dom.default(eqn, ins)  # negative padding crops: conservative
    operand_shape = eqn.invars[0].aval.shape
    out = np.zeros(_shape(eqn) + (dom.W,), np.uint64)
    idx = tuple(slice(lo, lo + (n - 1) * (it + 1) + 1 if n else lo, it + 1) for (lo, hi, it), n in zip(cfg, operand_shape))
    if x is not None:
        out[idx] = x
    if padval is not None:
        mask = np.ones(_shape(eqn), bool)
        mask[idx] = False
        out = np.where(mask[..., None], out | padval, out)
    return [out]


def _rev(dom, eqn, ins):
    return [np.flip(ins[0], axis=tuple(eqn.params["dimensions"]))]


def _reduce(dom, eqn, ins):
    return [bits.reduce_axes(ins[0], eqn.params["axes"])]


def _cumulative(dom, eqn, ins):
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    x = np.asarray(ins[0])
    if reverse:
        x = np.flip(x, axis=axis)
    out = np.bitwise_or.accumulate(x, axis=axis)
    if reverse:
        out = np.flip(out, axis=axis)
    return [out]


def _split(dom, eqn, ins):
    axis = eqn.params["axis"]
    cuts = np.cumsum(eqn.params["sizes"])[:-1]
    return list(np.split(ins[0], cuts, axis=axis))


def _sort(dom, eqn, ins):
    d = eqn.params["dimension"]
    outs = []
    for v, var in zip(ins, eqn.outvars):
        outs.append(None if v is None else bits.broadcast(bits.reduce_axes(v, (d,), keepdims=True), var.aval.shape))
    return outs


def _top_k(dom, eqn, ins):
    v = ins[0]
    vals = bits.broadcast(bits.reduce_axes(v, (v.ndim - 2,), keepdims=True), _shape(eqn, 0))
    return [vals, None]


#: Cost bound (multiply-adds) for the exact dot_general rule with a known operand.
_DOT_EXACT_BUDGET = 5e7


def _dot_general(dom, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    known = dom.known_in
    lhs_aval, rhs_aval = eqn.invars[0].aval, eqn.invars[1].aval
    lfree = [d for d in range(lhs_aval.ndim) if d not in lc and d not in lb]
    rfree = [d for d in range(rhs_aval.ndim) if d not in rc and d not in rb]
    D, W = dom.D, dom.W
    lsz = [lhs_aval.shape[d] for d in lb], int(np.prod([lhs_aval.shape[d] for d in lfree], dtype=np.int64)), \
        int(np.prod([lhs_aval.shape[d] for d in lc], dtype=np.int64))
    rf = int(np.prod([rhs_aval.shape[d] for d in rfree], dtype=np.int64))
    bshape, lf, K = tuple(lsz[0]), lsz[1], lsz[2]
    out_shape = _shape(eqn)

    def arrange(v, aval, b, free, c, nd):  # -> (B..., F, K, W) packed
        t = v.transpose(tuple(b) + tuple(free) + tuple(c) + (nd,)) if v.ndim == nd + 1 else v
        return t.reshape(bshape + (-1, K, W))

    # Exact when exactly one side is h-dependent and the other is known: out depends on
    # the h-side entries paired with a nonzero of the known side.
    for hs, ks in ((0, 1), (1, 0)):
        if ins[hs] is not None and ins[ks] is None and known[ks] is not None:
            B = int(np.prod(bshape, dtype=np.int64))
            F_h = lf if hs == 0 else rf
            F_k = rf if hs == 0 else lf
            if B * F_h * F_k * K * D > _DOT_EXACT_BUDGET:
                break
            kv = np.asarray(known[ks]) != 0
            kb, kfree, kc = (lb, lfree, lc) if ks == 0 else (rb, rfree, rc)
            kmat = kv.transpose(tuple(kb) + tuple(kfree) + tuple(kc)).reshape(bshape + (F_k, K)).astype(np.float32)
            haval = (lhs_aval, rhs_aval)[hs]
            hb, hfree, hc = (lb, lfree, lc) if hs == 0 else (rb, rfree, rc)
            hv = bits.to_bool(ins[hs], haval.shape, D)
            hmat = hv.transpose(tuple(hb) + tuple(hfree) + tuple(hc) + (haval.ndim,)).reshape(bshape + (F_h, K, D))
            # out[b, fk, fh, j] = OR_k kmat[b, fk, k] & hmat[b, fh, k, j]
            prod = np.einsum("...ak,...bkj->...abj", kmat, hmat.astype(np.float32)) > 0
            if hs == 1:  # out order is (lhs free = known, rhs free = h)
                res = prod
            else:
                res = np.swapaxes(prod, -2, -3)
            return [bits.from_bool(res.reshape(out_shape + (D,)), D)]

    lhs, rhs = ins
    lk = None if lhs is None else bits.reduce_axes(arrange(lhs, lhs_aval, lb, lfree, lc, lhs_aval.ndim), (-2,))
    rk = None if rhs is None else bits.reduce_axes(arrange(rhs, rhs_aval, rb, rfree, rc, rhs_aval.ndim), (-2,))
    full = bshape + (lf, rf, W)
    parts = []
    if lk is not None:
        parts.append(np.broadcast_to(lk[..., :, None, :], full))
    if rk is not None:
        parts.append(np.broadcast_to(rk[..., None, :, :], full))
    out = bits.union(*parts)
    return [None if out is None else out.reshape(out_shape + (W,))]


def _gather(dom, eqn, ins):
    operand = ins[0]
    known = dom.known_in
    if operand is None:
        return [None]
    p = eqn.params
    out_shape = _shape(eqn)
    if known[1] is not None:
        pos = gather_positions(eqn.invars[0].aval.shape, known[1], p["dimension_numbers"], p["slice_sizes"], p["mode"], out_shape)
        if pos is not None:
            flat = dom.full(operand, eqn.invars[0].aval.shape).reshape(-1, dom.W)
            taken = flat[np.maximum(pos, 0)]
            return [np.where((pos >= 0)[..., None], taken, np.uint64(0))]
    return [dom.dense(out_shape, [operand])]


def _scatter(dom, eqn, ins):
    operand, _, updates = ins[:3]
    known = dom.known_in
    p = eqn.params
    op_shape = eqn.invars[0].aval.shape
    replace = eqn.primitive.name == "scatter"
    if known[1] is not None:
        pos = scatter_positions(op_shape, known[1], p["dimension_numbers"], eqn.invars[2].aval.shape, p["mode"])
        if pos is not None:
            out = np.array(dom.full(operand, op_shape).reshape(-1, dom.W))
            hit = pos[pos >= 0]
            if replace:
                out[hit] = 0
            if updates is not None:
                up = dom.full(updates, eqn.invars[2].aval.shape)[pos >= 0]
                np.bitwise_or.at(out, hit, up)
            out = out.reshape(tuple(op_shape) + (dom.W,))
            return [out if out.any() else None]
    return [bits.union(operand, dom.dense(op_shape, [updates]))]


def _dynamic_slice(dom, eqn, ins):
    x = ins[0]
    known = dom.known_in
    sizes = tuple(eqn.params["slice_sizes"])
    shape = eqn.invars[0].aval.shape
    starts = dynamic_slice_starts(shape, sizes, known[1:])
    idx, red = [], []
    for d, (st, sz) in enumerate(zip(starts, sizes)):
        if st is None:
            red.append(d)
            idx.append(slice(None))
        else:
            idx.append(slice(st, st + sz))
    out = x[tuple(idx)]
    if red:
        out = bits.reduce_axes(out, red, keepdims=True)
    return [bits.broadcast(out, sizes)]


def _dynamic_update_slice(dom, eqn, ins):
    x, upd = ins[0], ins[1]
    known = dom.known_in
    shape = eqn.invars[0].aval.shape
    ushape = eqn.invars[1].aval.shape
    starts = dynamic_slice_starts(shape, ushape, known[2:])
    if all(s is not None for s in starts):
        out = np.array(dom.full(x, shape))
        idx = tuple(slice(s, s + n) for s, n in zip(starts, ushape))
        out[idx] = dom.full(upd, ushape)
        return [out if out.any() else None]
    return [bits.union(x, dom.dense(shape, [upd]))]


def _zero_deriv(dom, eqn, ins):
    return [None for _ in eqn.outvars]


def _custom_jvp(dom, eqn, ins):
    """Union of the primal's dependencies and of the JVP rule's tangent dependencies."""
    known = list(dom.known_in)
    sub = _compat.call_subjaxpr(eqn)
    dom.custom_jvp[_compat.call_name(eqn)] = None
    rule = _compat.custom_jvp_rule(eqn)
    if sub is None or rule is None:
        dom.unknown.add(eqn.primitive.name)
        return dom.default(eqn, ins)
    primal = propagate(sub, ins, dom, known=known)
    jvp, out_zeros, nc = rule
    if any(v is not None for v in ins[:nc]):
        return dom.default(eqn, ins)  # h-dependent closed-over constants: no rule for their tangents
    n = len(ins) - nc
    # Primals as h-independent, tangents carrying the operands' dependencies: the tangent
    # outputs depend on exactly the state elements J's rows of the call may read.
    res = propagate(jvp, [None] * n + list(ins[nc:]), dom, known=known[nc:] + [None] * n)
    tangents = iter(res[len(eqn.outvars):])
    outs = []
    for p, z in zip(primal, out_zeros):
        t = None if z else next(tangents)
        outs.append(bits.union(p, t))
    return outs


_FAMILY = {"elementwise": _elementwise, "reduction": _reduce, "cumulative": _cumulative}
primitives.defrule("sparsity", "broadcast_in_dim")(_broadcast_in_dim)
primitives.defrule("sparsity", "reshape", "squeeze", "expand_dims")(_reshape_like_out)
for _name, _rule in (("transpose", _transpose), ("slice", _slice), ("concatenate", _concatenate), ("pad", _pad),
                     ("rev", _rev), ("dot_general", _dot_general), ("gather", _gather), ("dynamic_slice", _dynamic_slice),
                     ("dynamic_update_slice", _dynamic_update_slice), ("split", _split), ("sort", _sort),
                     ("top_k", _top_k), ("custom_jvp_call", _custom_jvp)):
    primitives.defrule("sparsity", _name)(_rule)
primitives.defrule("sparsity", *sorted(primitives.names_where(lambda t: t.name.startswith("scatter"))))(_scatter)
del _name, _rule


def dependency(rec: Any) -> tuple[list[Any], set[str], list[int]]:
    """Per-output packed dependency values of ``rec.step_jaxpr`` on the flat state vector,
    the primitives handled conservatively, and the constants whose values were folded."""
    outs, dom = _run(rec)
    return outs, set(dom.unknown), sorted(set(dom.folded_consts))


def _run(rec: Any):
    dom = SparsityDomain(rec.size)
    jp = rec.step_jaxpr
    ins: list[Any] = [None] * len(jp.jaxpr.invars)
    ins[rec.state_invar] = bits.eye(rec.size) if rec.size else None
    outs = propagate(jp, ins, dom)
    return outs, dom


def const_fingerprint(rec: Any, indices: Sequence[int]) -> tuple:
    """Hashable digest of the constant values the analysis folded (index arrays, masks)."""
    import hashlib

    out = []
    consts = rec.consts
    for i in indices:
        try:
            a = np.asarray(consts[i])
        except Exception:  # noqa: BLE001 - a tracer now: the folded value no longer applies
            out.append((int(i), "traced"))
            continue
        out.append((int(i), a.dtype.str, a.shape, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()))
    return tuple(out)


class SparsityPass(Pass):
    """Provides ``sparsity`` (D × D bool: J[i, j] may be nonzero), ``conservative`` (primitives
    without a rule), ``discrete_reads_float``, ``const_fingerprint`` (the constants whose
    values the analysis relied on; see ``facts_valid_for``), ``custom_vjp`` (names of the
    custom_vjp calls whose operands depend on h, in order; empty when none — their VJP is a
    user rule, not the transpose of the JVP of the primal, so an adjoint built from J must
    not be trusted and ``jax.jvp`` / ``jax.linearize`` of the cell fail: see
    ``autopar._compat.inline_custom_vjp``) and ``custom_jvp`` (the same for custom_jvp calls,
    whose rule the sparsity covers)."""

    name = "sparsity"
    provides = ("sparsity", "conservative", "discrete_reads_float", "const_fingerprint", "custom_vjp", "custom_jvp")

    def run(self, rec, facts):
        outs, dom = _run(rec)
        unknown, folded = set(dom.unknown), sorted(set(dom.folded_consts))
        D = rec.size
        S = bits.to_bool(outs[0], (D,), D) if D else np.zeros((0, 0), bool)
        return {
            "sparsity": np.asarray(S, bool).reshape(D, D),
            "conservative": sorted(unknown),
            "discrete_reads_float": bool(rec.discrete_depends_on_float),
            "const_fingerprint": const_fingerprint(rec, folded),
            "custom_vjp": list(dom.custom_vjp),
            "custom_jvp": list(dom.custom_jvp),
        }


def custom_jvp_elementwise(eqn: Any, depends: Sequence[bool]) -> bool:
    """Whether the JVP rule of a custom_jvp call is elementwise in each operand flagged in
    ``depends``: every output element's tangent reads at most the same element of that operand's
    tangent (the operand has the output's shape, or is a scalar). False when the rule is not
    available. Used by the quasi solvers' diagonal interpreter."""
    rule = _compat.custom_jvp_rule(eqn)
    if rule is None or len(eqn.outvars) != 1:
        return False
    jvp, out_zeros, nc = rule
    if any(depends[:nc]):
        return False
    if out_zeros[0]:
        return True
    out_shape = tuple(eqn.outvars[0].aval.shape)
    n = len(eqn.invars) - nc
    for j in range(nc, len(eqn.invars)):
        if not depends[j]:
            continue
        shape = tuple(eqn.invars[j].aval.shape)
        if shape == ():
            continue
        if shape != out_shape:
            return False
        m = int(np.prod(shape, dtype=np.int64))
        if m > 4096:
            return False  # the check itself would cost O(m²) bits
        dom = SparsityDomain(m)
        ins: list[Any] = [None] * (2 * n)
        ins[n + j - nc] = bits.eye(m).reshape(shape + (dom.W,))
        res = propagate(jvp, ins, dom)
        t = res[len(eqn.outvars)]
        if t is None:
            continue
        B = bits.to_bool(t, out_shape, m).reshape(m, m)
        if (B & ~np.eye(m, dtype=bool)).any():
            return False
    return True
