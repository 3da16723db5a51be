"""Discrete (integer) state leaves: is their update elementwise-affine in themselves?

Integer and bool state leaves are solved before the float state. When every
integer leaf's new value is ``a_t ⊙ n + b_t`` elementwise (a step counter
``n + 1``, a position ``n + len(x)``), the leaves form an integer linear
recurrence: integer multiply-add is a ring (also with wraparound), so an
associative scan over (a, b) pairs is *exact*, bit for bit. Otherwise they are
solved by a sequential scan of their own.

Only a whitelist of integer-linear primitives counts as affine here (integer
division, remainders, shifts and bit operations do not).
"""

from __future__ import annotations

import numpy as np

from autopar import _compat

from .base import Pass
from .interpret import propagate
from .linearity import AFFINE, CONSTANT, NONLINEAR, DegreeDomain
from .sparsity import SparsityDomain

__all__ = ["DiscretePass"]

_INT_AFFINE = frozenset(
    """add sub neg mul convert_element_type copy copy_p broadcast_in_dim reshape squeeze expand_dims
    transpose slice concatenate select_n""".split()
)


class _IntDegree(DegreeDomain):
    def apply(self, eqn, ins):
        if max(ins, default=CONSTANT) != CONSTANT and eqn.primitive.name not in _INT_AFFINE and not _compat.call_subjaxpr(eqn):
            return [NONLINEAR for _ in eqn.outvars]
        if eqn.primitive.name == "convert_element_type" and max(ins) != CONSTANT:
            # a cast to a float or a narrower integer is not exact integer arithmetic
            src, dst = np.dtype(eqn.invars[0].aval.dtype), np.dtype(eqn.params["new_dtype"])
            if dst.kind not in "iu" or dst.itemsize < src.itemsize:
                return [NONLINEAR]
        if eqn.primitive.name == "select_n" and ins[0] != CONSTANT:
            return [NONLINEAR]
        return super().apply(eqn, ins)


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
        deg_in = [CONSTANT] * n_in
        for k in range(len(infos)):
            deg_in[first + k] = AFFINE
        degrees = propagate(jp, deg_in, _IntDegree())[1:]
        if any(d > AFFINE for d in degrees):
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
            sp_in[first + k] = eye.reshape(tuple(info.shape) + (total,))
            off += info.size
        outs = propagate(jp, sp_in, dom)[1:]
        off = 0
        for out, info in zip(outs, infos):
            allowed = np.zeros((info.size, total), bool)
            allowed[:, off : off + info.size] = np.eye(info.size, dtype=bool)
            if out is not None and (out.reshape(info.size, total) & ~allowed).any():
                return {"discrete_affine": False}
            off += info.size
        return {"discrete_affine": True}
