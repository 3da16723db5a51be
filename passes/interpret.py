"""A forward abstract interpreter over jaxprs, shared by the lattice passes.

``propagate(jaxpr, inputs, domain)`` walks the equations in order and maps each
variable to an abstract value of ``domain``. A domain supplies a constant value
(for literals and h-independent inputs), one rule per primitive name, and a
conservative ``default`` for primitives without a rule; the names of those are
collected in ``unknown`` so reports can say which primitives were treated
conservatively.

Next to the abstract values, ``propagate`` folds *known* values in numpy (see
``constfold``): literals, ``iota`` and integer/bool constants and what exact
primitives compute from them. A rule reads the known values of its operands in
``domain.known_in`` (one numpy array or None per operand; read it first thing,
since nested ``propagate`` calls overwrite it).

Nested jaxprs:

* call-like primitives (jit, custom_jvp_call, custom_vjp_call, remat, …) recurse
  into their sub-jaxpr with the operands' abstract values;
* ``cond`` is the join over its branches (only the taken branch when the index is
  known), ``scan`` and ``while`` iterate the body to a fixpoint of the carry:
  ``c ← join(c, body(c))`` — sound for any trip count (including zero) because the
  fixpoint over-approximates every iterate. After ``MAX_FIXPOINT`` rounds the carry
  is widened to the domain's top. The index of a cond / predicate of a while reaches
  the result through ``domain.guard`` (the degree lattice makes it piecewise).

A domain that does not implement ``join`` gets the conservative default for control flow.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from autopar import _compat

from .constfold import fold, foldable_const

__all__ = ["Domain", "propagate", "MAX_FIXPOINT", "CONTROL_FLOW"]

#: Rounds of a loop fixpoint before the carry is widened to top.
MAX_FIXPOINT = 64

CONTROL_FLOW = frozenset({"cond", "scan", "while"})


class Domain:
    """An abstract domain: a lattice of values with one rule per primitive."""

    name = "domain"
    #: Outputs of an equation whose operands are all constant are constant (skip the rule).
    const_fast_path = True

    def __init__(self) -> None:
        self.rules: dict[str, Callable[..., list[Any]]] = {}
        self.unknown: set[str] = set()
        self.known_in: list[Any] = []
        self.known_out: list[Any] | None = None
        self.folded_consts: list[int] = []

    # ---- lattice -------------------------------------------------------------------
    def const(self, aval: Any) -> Any:
        """The value of something that does not depend on the tracked input."""
        raise NotImplementedError

    def default(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        """Conservative rule for a primitive without a specific rule."""
        raise NotImplementedError

    def is_const(self, value: Any) -> bool:
        raise NotImplementedError

    def join(self, a: Any, b: Any) -> Any:
        """Least upper bound (needed for cond / scan / while)."""
        raise NotImplementedError

    def equal(self, a: Any, b: Any) -> bool:
        return a is b or a == b

    def widen(self, value: Any, aval: Any, ins: Sequence[Any]) -> Any:
        """Top of the lattice for a loop carry that did not converge (``ins``: all loop operands)."""
        raise NotImplementedError

    def unstack(self, value: Any, aval: Any) -> Any:
        """Abstract value of ``xs[i]`` (any i) from that of ``xs`` (scan inputs)."""
        return value

    def stack(self, value: Any, aval: Any) -> Any:
        """Abstract value of stacked per-iteration outputs (``aval``: the stacked aval)."""
        return value

    def guard(self, selector: Any, outs: list[Any]) -> list[Any]:
        """Outputs of a cond / while whose branch or trip count is chosen by ``selector``."""
        return outs

    # ---- dispatch ------------------------------------------------------------------
    def apply(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        name = eqn.primitive.name
        rule = self.rules.get(name)
        if self.const_fast_path and all(self.is_const(v) for v in ins):
            return [self.const(v.aval) for v in eqn.outvars]
        if rule is not None:
            return rule(self, eqn, ins)
        if name in CONTROL_FLOW:
            return control_flow(self, eqn, ins)
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None and len(sub.jaxpr.invars) == len(ins):
            outs, kouts = propagate_known(sub, ins, self, known=list(self.known_in))
            self.known_out = kouts
            return outs
        self.unknown.add(name)
        return self.default(eqn, ins)


def _has_join(domain: Domain) -> bool:
    return type(domain).join is not Domain.join


def control_flow(dom: Domain, eqn: Any, ins: Sequence[Any]) -> list[Any]:
    """cond / scan / while by recursion and fixpoint (conservative if the domain has no join)."""
    known = list(dom.known_in)
    name = eqn.primitive.name
    if not _has_join(dom):
        dom.unknown.add(name)
        return dom.default(eqn, ins)
    p = eqn.params
    if name == "cond":
        branches = p["branches"]
        ops, kops = list(ins[1:]), known[1:]
        if known[0] is not None:
            i = int(np.clip(int(np.asarray(known[0])), 0, len(branches) - 1))
            return propagate(branches[i], ops, dom, known=kops)
        outs = None
        for br in branches:
            o = propagate(br, ops, dom, known=kops)
            outs = o if outs is None else [dom.join(a, b) for a, b in zip(outs, o)]
        return dom.guard(ins[0], outs) if not dom.is_const(ins[0]) else outs
    if name == "scan":
        body = p["jaxpr"]
        nc, nk = p["num_consts"], p["num_carry"]
        consts, carry, xs = list(ins[:nc]), list(ins[nc:nc + nk]), list(ins[nc + nk:])
        bin_avals = [v.aval for v in body.jaxpr.invars]
        xs_el = [dom.unstack(x, a) for x, a in zip(xs, bin_avals[nc + nk:])]
        kin = known[:nc] + [None] * (nk + len(xs))
        carry_out, outs = _fixpoint(dom, body, consts, carry, xs_el, kin, nk, ins, bin_avals[nc:nc + nk])
        ys = [dom.stack(y, v.aval) for y, v in zip(outs[nk:], eqn.outvars[nk:])]
        return carry_out + ys
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = list(ins[:cn]), list(ins[cn:cn + bn]), list(ins[cn + bn:])
        body, cond = p["body_jaxpr"], p["cond_jaxpr"]
        kin = known[cn:cn + bn] + [None] * len(carry)
        bavals = [v.aval for v in body.jaxpr.invars[bn:]]
        carry_out, _ = _fixpoint(dom, body, bconsts, carry, [], kin, len(carry), ins, bavals)
        pred = propagate(cond, cconsts + carry_out, dom, known=known[:cn] + [None] * len(carry))[0]
        return dom.guard(pred, carry_out) if not dom.is_const(pred) else carry_out
    raise AssertionError(name)  # pragma: no cover


def _fixpoint(dom, body, consts, carry, xs_el, kin, nk, all_ins, carry_avals):
    c = list(carry)
    for _ in range(MAX_FIXPOINT):
        outs = propagate(body, consts + c + xs_el, dom, known=kin)
        new = [dom.join(a, b) for a, b in zip(c, outs[:nk])]
        if all(dom.equal(a, b) for a, b in zip(c, new)):
            return c, outs
        c = new
    c = [dom.widen(v, a, all_ins) for v, a in zip(c, carry_avals)]
    outs = propagate(body, consts + c + xs_el, dom, known=kin)
    return [dom.join(a, b) for a, b in zip(c, outs[:nk])], outs


def _literal_value(atom: Any) -> Any:
    try:
        return np.asarray(_compat.literal_value(atom))
    except Exception:  # noqa: BLE001
        return None


class _KnownOnly(Domain):
    """A trivial domain: used to fold calls whose operands are all known."""

    def const(self, aval):
        return None

    def is_const(self, value):
        return True

    def default(self, eqn, ins):
        return [None for _ in eqn.outvars]


def propagate(jaxpr: Any, inputs: Sequence[Any], domain: Domain, known: Sequence[Any] | None = None) -> list[Any]:
    """Abstract values of ``jaxpr``'s outputs given abstract ``inputs`` (one per invar).

    ``known``: optional concrete numpy values of the inputs (None where unknown).
    """
    return propagate_known(jaxpr, inputs, domain, known)[0]


def propagate_known(jaxpr: Any, inputs: Sequence[Any], domain: Domain, known: Sequence[Any] | None = None):
    """Like ``propagate``, also returning the known (folded) values of the outputs."""
    closed = jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else _compat.ClosedJaxpr(jaxpr, ())
    jp = closed.jaxpr
    env: dict[Any, Any] = {}
    kenv: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        if _compat.is_literal(atom):
            return domain.const(atom.aval)
        return env[atom]

    def kread(atom: Any) -> Any:
        if _compat.is_literal(atom):
            return _literal_value(atom)
        return kenv.get(atom)

    for i, (v, c) in enumerate(zip(jp.constvars, closed.consts)):
        env[v] = domain.const(v.aval)
        k = foldable_const(c)
        if k is not None:
            kenv[v] = k
            if known is None:
                domain.folded_consts.append(i)
    if len(inputs) != len(jp.invars):
        raise ValueError(f"propagate: {len(inputs)} inputs for {len(jp.invars)} invars")
    for v, val in zip(jp.invars, inputs):
        env[v] = val
    if known is not None:
        for v, k in zip(jp.invars, known):
            if k is not None:
                kenv[v] = k
    for eqn in jp.eqns:
        kin = [kread(a) for a in eqn.invars]
        domain.known_in = kin
        domain.known_out = None
        outs = domain.apply(eqn, [read(a) for a in eqn.invars])
        kout, domain.known_out = domain.known_out, None
        if len(outs) != len(eqn.outvars):
            raise ValueError(f"rule for {eqn.primitive.name!r} returned {len(outs)} values for {len(eqn.outvars)} outputs")
        for var, val in zip(eqn.outvars, outs):
            if not isinstance(var, _compat.DropVar):
                env[var] = val
        if kout is None and all(k is not None for k in kin) and eqn.primitive.name not in CONTROL_FLOW:
            sub = _compat.call_subjaxpr(eqn)
            if sub is not None:
                if len(sub.jaxpr.invars) == len(kin):
                    kout = propagate_known(sub, [None] * len(kin), _KnownOnly(), known=kin)[1]
            else:
                kout = fold(eqn, kin)
        if kout is not None:
            for var, val in zip(eqn.outvars, kout):
                if val is not None and not isinstance(var, _compat.DropVar):
                    kenv[var] = val
    return [read(v) for v in jp.outvars], [kread(v) for v in jp.outvars]
