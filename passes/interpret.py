"""A forward abstract interpreter over jaxprs, shared by the lattice passes.

``propagate(jaxpr, inputs, domain)`` walks the equations in order and maps each
variable to an abstract value of ``domain``. A domain supplies a constant value
(for literals and h-independent inputs), its rules, and a conservative ``default``
for primitives without a rule; the names of those are collected in ``unknown`` so
reports can say which primitives were treated conservatively.

The rules come from the primitive trait table (``autopar.primitives``): for each row,
the user's rule (``register_rule``) if any, else the row's slot for this domain
(``rules[domain.name]``), else the domain's rule for the row's family
(``Domain.family_rule``). The lattice and the table are separate things.

Next to the abstract values, ``propagate`` folds *known* values in numpy (see
``constfold``): literals, ``iota`` and integer/bool constants and what exact
primitives compute from them. A rule reads the known values of its operands in
``domain.known_in`` (one numpy array or None per operand; read it first thing,
since nested ``propagate`` calls overwrite it).

The walk is ``_compat.evaluate`` (the one jaxpr evaluator) with an interpreter whose values
are (abstract value, known value) pairs. Nested jaxprs:

* call-like primitives (jit, custom_vjp_call, remat, …) recurse into their sub-jaxpr with
  the operands' abstract values, through the evaluator's one hook (``Domain.enters``);
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

from autopar import _compat, primitives

from .constfold import fold, foldable_const

__all__ = ["Domain", "propagate", "MAX_FIXPOINT", "is_control_flow"]

#: Rounds of a loop fixpoint before the carry is widened to top.
MAX_FIXPOINT = 64

_RULE_CACHE: dict[tuple, dict[str, Callable]] = {}


def is_control_flow(eqn: Any) -> bool:
    t = primitives.TABLE.get(eqn.primitive.name)
    return t is not None and t.dataflow == "control-flow"


def domain_rules(domain: "Domain") -> dict[str, Callable]:
    """``{primitive name: rule(domain, eqn, ins)}`` of ``domain`` read off the trait table (user rule,
    else the row's slot ``rules[domain.name]``, else ``domain.family_rule(row)``); cached per table version."""
    key = (type(domain), domain.name, primitives.version())
    hit = _RULE_CACHE.get(key)
    if hit is None:
        hit = {}
        for name, t in primitives.TABLE.items():
            spec = t.user.get(domain.name)
            r = domain.user_rule(name, spec) if spec is not None else None
            r = r or t.rules.get(domain.name) or domain.family_rule(t)
            if r is not None:
                hit[name] = r
        if len(_RULE_CACHE) > 64:
            _RULE_CACHE.clear()
        _RULE_CACHE[key] = hit
    return hit


class Domain:
    """An abstract domain: a lattice of values with one rule per primitive."""

    name = "domain"
    #: Outputs of an equation whose operands are all constant are constant (skip the rule).
    const_fast_path = True

    def __init__(self) -> None:
        self.rules: dict[str, Callable[..., list[Any]]] = domain_rules(self)
        self.unknown: set[str] = set()
        self.known_in: list[Any] = []
        self.known_out: list[Any] | None = None
        self.folded_consts: list[int] = []

    def family_rule(self, traits: primitives.Traits) -> Callable | None:
        """This domain's rule for a primitive of ``traits``' family when its slot is empty (None: none)."""
        return None

    @staticmethod
    def user_rule(name: str, spec: Any) -> Callable | None:
        """A ``register_rule`` spec for this domain as a rule (None: the domain takes no user rules)."""
        return None

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
        if is_control_flow(eqn):
            return control_flow(self, eqn, ins)
        self.unknown.add(name)
        return self.default(eqn, ins)

    def enters(self, eqn: Any, ins: Sequence[Any]) -> bool:
        """Whether a call (jit, custom_vjp, remat, …) is interpreted by walking its sub-jaxpr: unless its
        operands are all constant or the domain has a rule for it (custom_jvp_call)."""
        if self.const_fast_path and all(self.is_const(v) for v in ins):
            return False
        return eqn.primitive.name not in self.rules


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


class _Propagate(_compat.Interpreter):
    """The evaluator's view of a domain: values are (abstract, known numpy value or None) pairs."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def literal(self, atom):
        return self.domain.const(atom.aval), _literal_value(atom)

    def const(self, var, value):
        return self.domain.const(var.aval), foldable_const(value)

    def enters(self, eqn, ins):
        return self.domain.enters(eqn, [a for a, _ in ins])

    def equation(self, eqn, ins):
        domain = self.domain
        kin = [k for _, k in ins]
        domain.known_in = kin
        domain.known_out = None
        outs = domain.apply(eqn, [a for a, _ in ins])
        kout, domain.known_out = domain.known_out, None
        if len(outs) != len(eqn.outvars):
            raise ValueError(f"rule for {eqn.primitive.name!r} returned {len(outs)} values for {len(eqn.outvars)} outputs")
        if kout is None and all(k is not None for k in kin) and not is_control_flow(eqn):
            sub = _compat.call_subjaxpr(eqn)
            if sub is not None:
                if len(sub.jaxpr.invars) == len(kin):
                    kout = propagate_known(sub, [None] * len(kin), _KnownOnly(), known=kin)[1]
            else:
                kout = fold(eqn, kin)
        if kout is None:
            return [(o, None) for o in outs]
        return list(zip(outs, kout))


def propagate_known(jaxpr: Any, inputs: Sequence[Any], domain: Domain, known: Sequence[Any] | None = None):
    """Like ``propagate``, also returning the known (folded) values of the outputs."""
    closed = jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else _compat.ClosedJaxpr(jaxpr, ())
    jp = closed.jaxpr
    if len(inputs) != len(jp.invars):
        raise ValueError(f"propagate: {len(inputs)} inputs for {len(jp.invars)} invars")
    consts = []
    for i, (v, c) in enumerate(zip(jp.constvars, closed.consts)):
        k = foldable_const(c)
        if k is not None and known is None:
            domain.folded_consts.append(i)
        consts.append((domain.const(v.aval), k))
    args = list(zip(inputs, known if known is not None else [None] * len(inputs)))
    outs = _compat.evaluate(closed, args, _Propagate(domain), consts=consts)
    return [a for a, _ in outs], [k for _, k in outs]
