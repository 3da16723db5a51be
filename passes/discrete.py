"""Discrete (integer) state leaves: is their update elementwise-affine in themselves?

Integer and bool state leaves are solved before the float state. When every
integer leaf's new value is ``a_t ⊙ n + b_t`` elementwise (a step counter
``n + 1``, a position ``n + len(x)``), the leaves form an integer linear
recurrence: integer multiply-add is a ring (also with wraparound), so an
associative scan over (a, b) pairs is *exact*, bit for bit. Otherwise they are
solved by a sequential scan of their own.

Only the integer-linear primitives (``int_affine`` in ``autopar.primitives``) count as
affine here (integer division, remainders, shifts and bit operations do not).
"""

from __future__ import annotations

import numpy as np

from autopar import primitives

from . import bits
from .base import Pass
from .interpret import Domain, propagate
from .sparsity import SparsityDomain

__all__ = ["DiscretePass"]


class _IntDegree(Domain):
    """Degree of integer values in the integer state: constant (0) < affine (1) < other (2).

    Its own small lattice: only the integer-linear primitives (``int_affine``) keep a value affine;
    anything else that reads the state (division, remainders, comparisons, bit operations,
    casts to floats or to narrower integers) makes it "other".
    """

    def const(self, aval):
        return 0

    def is_const(self, value):
        return value == 0

    def join(self, a, b):
        return max(a, b)

    def widen(self, value, aval, ins):
        return 2

    def guard(self, selector, outs):
        return [2 if o else 0 for o in outs]

    def default(self, eqn, ins):
        return [2 for _ in eqn.outvars]

    def apply(self, eqn, ins):
        name = eqn.primitive.name
        if max(ins, default=0) == 0:
            return super().apply(eqn, ins)
        t = primitives.row(name)
        if t is None or not t.int_affine:
            return [2 for _ in eqn.outvars]
        if name == "convert_element_type":
            src, dst = np.dtype(eqn.invars[0].aval.dtype), np.dtype(eqn.params["new_dtype"])
            if dst.kind not in "iu" or dst.itemsize < src.itemsize:
                return [2]
        if name == "select_n" and ins[0] != 0:
            return [2]
        if name == "mul":
            return [2 if min(ins) > 0 else max(ins)]
        return [max(ins) for _ in eqn.outvars]


class DiscretePass(Pass):
    """Provides ``discrete_affine``: integer leaves update as n ← a ⊙ n + b, elementwise."""

    name = "discrete"
    provides = ("discrete_affine",)

    def run(self, rec, facts):
        infos = rec.layout.discrete_leaves
        if not infos or rec.discrete_depends_on_float:
            return {"discrete_affine": False}
        if any(np.dtype(i.dtype).kind not in "iu" for i in infos):
            return {"discrete_affine": False}
        jp = rec.step_jaxpr
        n_in = len(jp.jaxpr.invars)
        first = rec.state_invar + 1
        # degree of each discrete output in the discrete state
        deg_in = [0] * n_in
        for k in range(len(infos)):
            deg_in[first + k] = 1
        degrees = propagate(jp, deg_in, _IntDegree())[1:]
        if any(d > 1 for d in degrees):
            return {"discrete_affine": False}
        # elementwise: each element of leaf k depends only on the same element of leaf k
        sizes = [i.size for i in infos]
        total = sum(sizes)
        dom = SparsityDomain(total)
        sp_in = [None] * n_in
        off = 0
        for k, info in enumerate(infos):
            eye = np.zeros((info.size, total), bool)
            eye[:, off : off + info.size] = np.eye(info.size, dtype=bool)
            sp_in[first + k] = bits.from_bool(eye.reshape(tuple(info.shape) + (total,)), total)
            off += info.size
        outs = propagate(jp, sp_in, dom)[1:]
        off = 0
        for out, info in zip(outs, infos):
            allowed = np.zeros((info.size, total), bool)
            allowed[:, off : off + info.size] = np.eye(info.size, dtype=bool)
            if out is not None and (bits.to_bool(out, info.shape, total).reshape(info.size, total) & ~allowed).any():
                return {"discrete_affine": False}
            off += info.size
        return {"discrete_affine": True}
