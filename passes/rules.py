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

The rules are written into the primitive trait table (``autopar.primitives``: the row's
``user`` specs, a new row for a primitive autopar has no row for); each lattice domain turns a
spec into its own rule (``SparsityDomain.user_rule``, ``DegreeDomain.user_rule``).
"""

from __future__ import annotations

from typing import Any, Callable

from autopar import primitives

__all__ = ["register_rule", "unregister_rule", "registered_rules", "SPARSITY_SPECS", "DEGREE_SPECS"]

SPARSITY_SPECS = ("elementwise", "dense", "zero")
DEGREE_SPECS = ("linear", "piecewise-linear", "nonlinear", "zero")


def _builtin(name: str) -> bool:
    """Whether autopar's sparsity or degree domain has a rule of its own for ``name``."""
    t = primitives.row(name)
    return t is not None and t.builtin and (t.degree is not None or "sparsity" in t.rules
                                            or t.dataflow in ("call", "control-flow"))


def register_rule(primitive: Any, *, sparsity: str | Callable | None = None, degree: str | Callable | None = None,
                  override: bool = False) -> None:
    """Register analysis rules for ``primitive`` (a name or a JAX ``Primitive``)."""
    name = primitive if isinstance(primitive, str) else getattr(primitive, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_rule() takes a primitive or its name as a string; got {type(primitive).__name__}: {primitive!r}.")
    if sparsity is None and degree is None:
        raise ValueError(f"register_rule({name!r}) needs at least one of sparsity=... or degree=....")
    if isinstance(sparsity, str) and sparsity not in SPARSITY_SPECS:
        raise ValueError(f"sparsity={sparsity!r} for {name!r}: use one of {SPARSITY_SPECS} or a callable rule(eqn, deps).")
    if isinstance(degree, str) and degree not in DEGREE_SPECS:
        raise ValueError(f"degree={degree!r} for {name!r}: use one of {DEGREE_SPECS} or a callable rule(eqn, degrees).")
    for what, val in (("sparsity", sparsity), ("degree", degree)):
        if val is not None and not (isinstance(val, str) or callable(val)):
            raise TypeError(f"{what}= for {name!r} must be a name or a callable; got {type(val).__name__}.")
    current = primitives.user_entries().get(name)
    if not override:
        if current:
            raise ValueError(
                f"a rule for primitive {name!r} is already registered ({', '.join(sorted(current))}). "
                "Pass override=True to replace it, or unregister_rule() it first."
            )
        if _builtin(name):
            raise ValueError(
                f"autopar already has a built-in rule for primitive {name!r}. Pass override=True to replace it "
                "explicitly (your rule must stay sound: a superset of the true dependencies)."
            )
    entry = dict(current or {}) if override else {}
    if sparsity is not None:
        entry["sparsity"] = sparsity
    if degree is not None:
        entry["degree"] = degree
    primitives.set_user_rule(name, entry)


def unregister_rule(primitive: Any) -> None:
    name = primitive if isinstance(primitive, str) else getattr(primitive, "name", primitive)
    if name not in primitives.user_entries():
        raise KeyError(f"no user rule for primitive {name!r}; registered: {sorted(primitives.user_entries())}")
    primitives.clear_user_rule(name)


def registered_rules() -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in primitives.user_entries().items()}
