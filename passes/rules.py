"""Per-primitive rules supplied by users: teach the analysis a custom primitive.

    autopar.passes.register_rule("my_prim", sparsity="elementwise", degree="nonlinear")

``sparsity`` says which state elements each output element may depend on:

* ``"elementwise"`` — output element e depends on operand elements e (operands broadcast);
* ``"dense"`` — every output element depends on everything any operand depends on;
* ``"zero"`` — no derivative (piecewise-constant or integer outputs);
* a callable ``rule(eqn, deps) -> list`` where ``deps[i]`` is None (operand i does not depend
  on h) or a bool array of shape ``operand_shape + (D,)``; it returns one such value per
  output. ``eqn.params`` holds the primitive's parameters.

``degree`` says how the outputs depend on h, by name: ``"linear"`` (linear in each operand:
the join of the operands' degrees), ``"piecewise-linear"`` (like max / abs), ``"nonlinear"``
(smooth nonlinear), ``"zero"`` (piecewise-constant), or a callable
``rule(eqn, degrees) -> str | list[str]`` with degrees named "constant",
"piecewise-constant", "affine", "piecewise-linear", "nonlinear".

A primitive without a user rule for a domain falls back to autopar's built-in rule or to
the conservative default (dense / nonlinear), which the report names. Registering a rule for
a primitive autopar already knows, or twice, raises unless ``override=True``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["register_rule", "unregister_rule", "registered_rules", "user_rules"]

_USER: dict[str, dict[str, Any]] = {}
_SPARSITY_NAMES = ("elementwise", "dense", "zero")
_DEGREE_NAMES = ("linear", "piecewise-linear", "nonlinear", "zero")


def _builtin(name: str) -> bool:
    from autopar import _compat

    from .linearity import BILINEAR, LINEAR, PIECEWISE_OPS, SMOOTH, STEP_OPS
    from .sparsity import RULES

    return (name in RULES or name in LINEAR or name in BILINEAR or name in PIECEWISE_OPS or name in SMOOTH
            or name in STEP_OPS or name in _compat.CALL_PRIMITIVES or name in ("cond", "scan", "while"))


def register_rule(primitive: Any, *, sparsity: str | Callable | None = None, degree: str | Callable | None = None,
                  override: bool = False) -> None:
    """Register analysis rules for ``primitive`` (a name or a JAX ``Primitive``)."""
    name = primitive if isinstance(primitive, str) else getattr(primitive, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_rule() takes a primitive or its name as a string; got {type(primitive).__name__}: {primitive!r}.")
    if sparsity is None and degree is None:
        raise ValueError(f"register_rule({name!r}) needs at least one of sparsity=... or degree=....")
    if isinstance(sparsity, str) and sparsity not in _SPARSITY_NAMES:
        raise ValueError(f"sparsity={sparsity!r} for {name!r}: use one of {_SPARSITY_NAMES} or a callable rule(eqn, deps).")
    if isinstance(degree, str) and degree not in _DEGREE_NAMES:
        raise ValueError(f"degree={degree!r} for {name!r}: use one of {_DEGREE_NAMES} or a callable rule(eqn, degrees).")
    for what, val in (("sparsity", sparsity), ("degree", degree)):
        if val is not None and not (isinstance(val, str) or callable(val)):
            raise TypeError(f"{what}= for {name!r} must be a name or a callable; got {type(val).__name__}.")
    if not override:
        if name in _USER:
            raise ValueError(
                f"a rule for primitive {name!r} is already registered ({', '.join(sorted(_USER[name]))}). "
                "Pass override=True to replace it, or unregister_rule() it first."
            )
        if _builtin(name):
            raise ValueError(
                f"autopar already has a built-in rule for primitive {name!r}. Pass override=True to replace it "
                "explicitly (your rule must stay sound: a superset of the true dependencies)."
            )
    entry = dict(_USER.get(name, {})) if override else {}
    if sparsity is not None:
        entry["sparsity"] = sparsity
    if degree is not None:
        entry["degree"] = degree
    _USER[name] = entry


def unregister_rule(primitive: Any) -> None:
    name = primitive if isinstance(primitive, str) else getattr(primitive, "name", primitive)
    if name not in _USER:
        raise KeyError(f"no user rule for primitive {name!r}; registered: {sorted(_USER)}")
    del _USER[name]


def registered_rules() -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in _USER.items()}


# ---- adapters to the internal domains -----------------------------------------------------
def user_rules(domain: str, dom: Any) -> dict[str, Callable]:
    """Internal rules ``rule(dom, eqn, ins)`` for ``domain`` ("sparsity" or "degree")."""
    out = {}
    for name, entry in _USER.items():
        spec = entry.get(domain)
        if spec is None:
            continue
        out[name] = _sparsity_rule(name, spec) if domain == "sparsity" else _degree_rule(name, spec)
    return out


def _sparsity_rule(name: str, spec: Any) -> Callable:
    from . import bits

    if spec == "elementwise":
        return lambda dom, eqn, ins: _elementwise_plain(dom, eqn, ins)
    if spec == "dense":
        return lambda dom, eqn, ins: dom.default(eqn, ins)
    if spec == "zero":
        return lambda dom, eqn, ins: [None for _ in eqn.outvars]

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


def _elementwise_plain(dom, eqn, ins):
    from . import bits

    acc = bits.union(*ins)
    return [None if acc is None else bits.broadcast(acc, v.aval.shape) for v in eqn.outvars]


def _degree_rule(name: str, spec: Any) -> Callable:
    from . import linearity as L

    def named(s):
        if isinstance(s, str) and s in L.DEGREE_VALUES:
            return L.DEGREE_VALUES[s]
        raise ValueError(f"user degree rule for {name!r} returned {s!r}; expected one of {list(L.DEGREE_VALUES)}.")

    if spec == "linear":
        return lambda dom, eqn, ins: [L.join(*ins)] * len(eqn.outvars)
    if spec == "piecewise-linear":
        return lambda dom, eqn, ins: [L._pw(L.join(*ins))] * len(eqn.outvars)
    if spec == "nonlinear":
        return lambda dom, eqn, ins: [L._smooth(L.join(*ins))] * len(eqn.outvars)
    if spec == "zero":
        return lambda dom, eqn, ins: [L.STEP if L.join(*ins) else L.CONSTANT] * len(eqn.outvars)

    def rule(dom, eqn, ins):
        res = spec(eqn, [L.DEGREE_NAMES[d] for d in ins])
        if isinstance(res, str):
            return [named(res)] * len(eqn.outvars)
        return [named(r) for r in res]

    return rule
