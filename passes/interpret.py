"""A forward abstract interpreter over jaxprs, shared by the lattice passes.

``propagate(jaxpr, inputs, domain)`` walks the equations in order and maps each
variable to an abstract value of ``domain``. A domain supplies a constant value
(for literals and h-independent inputs), one rule per primitive name, and a
conservative ``default`` for primitives without a rule; the names of those are
collected in ``unknown`` so reports can say which primitives were treated
conservatively. Call-like primitives (jit, custom_jvp_call, remat, …) recurse
into their sub-jaxpr; control flow primitives have rules of their own.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autopar import _compat

__all__ = ["Domain", "propagate"]


class Domain:
    """An abstract domain: a lattice of values with one rule per primitive."""

    name = "domain"

    def __init__(self) -> None:
        self.rules: dict[str, Callable[..., list[Any]]] = {}
        self.unknown: set[str] = set()

    def const(self, aval: Any) -> Any:
        """The value of something that does not depend on the tracked input."""
        raise NotImplementedError

    def default(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        """Conservative rule for a primitive without a specific rule."""
        raise NotImplementedError

    def is_const(self, value: Any) -> bool:
        raise NotImplementedError

    def apply(self, eqn: Any, ins: Sequence[Any]) -> list[Any]:
        name = eqn.primitive.name
        if all(self.is_const(v) for v in ins) and not _compat.call_subjaxpr(eqn):
            return [self.const(v.aval) for v in eqn.outvars]
        rule = self.rules.get(name)
        if rule is not None:
            return rule(self, eqn, ins)
        sub = _compat.call_subjaxpr(eqn)
        if sub is not None and len(sub.jaxpr.invars) == len(ins):
            return propagate(sub, ins, self)
        self.unknown.add(name)
        return self.default(eqn, ins)


def propagate(jaxpr: Any, inputs: Sequence[Any], domain: Domain) -> list[Any]:
    """Abstract values of ``jaxpr``'s outputs given abstract ``inputs`` (one per invar)."""
    closed = jaxpr if isinstance(jaxpr, _compat.ClosedJaxpr) else _compat.ClosedJaxpr(jaxpr, ())
    jp = closed.jaxpr
    env: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        if _compat.is_literal(atom):
            return domain.const(atom.aval)
        return env[atom]

    for v in jp.constvars:
        env[v] = domain.const(v.aval)
    if len(inputs) != len(jp.invars):
        raise ValueError(f"propagate: {len(inputs)} inputs for {len(jp.invars)} invars")
    for v, val in zip(jp.invars, inputs):
        env[v] = val
    for eqn in jp.eqns:
        outs = domain.apply(eqn, [read(a) for a in eqn.invars])
        for var, val in zip(eqn.outvars, outs):
            if not isinstance(var, _compat.DropVar):
                env[var] = val
    return [read(v) for v in jp.outvars]
