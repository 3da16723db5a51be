"""Every touch of JAX's jaxpr internals lives here.

The rest of autopar (and ``autopar.passes``) imports jaxpr types, primitive
names and helpers from this module only, so that a JAX upgrade that moves an
internal is a one-file change.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jex_core
from jax._src.interpreters import partial_eval as _pe

ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
Var = jex_core.Var
DropVar = jex_core.DropVar
Primitive = jex_core.Primitive

eval_jaxpr = jax.core.eval_jaxpr
jaxprs_in_params = jex_core.jaxprs_in_params

#: Primitives whose ``params`` hold one closed sub-jaxpr under ``jaxpr`` or
#: ``call_jaxpr`` that is called once with the equation's operands.
CALL_PRIMITIVES = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
     "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"}
)


def make_jaxpr(fun: Callable, *example_args: Any) -> ClosedJaxpr:
    """Trace ``fun`` abstractly on ``example_args`` (arrays or ShapeDtypeStructs)."""
    return jax.make_jaxpr(fun)(*example_args)


def call_subjaxpr(eqn: JaxprEqn) -> ClosedJaxpr | None:
    """The closed jaxpr a call-like equation runs on its operands, or None."""
    params = eqn.params
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = params.get(key)
        if sub is None:
            continue
        if isinstance(sub, ClosedJaxpr):
            return sub
        if isinstance(sub, Jaxpr):
            return ClosedJaxpr(sub, ())
    return None


def dce(jaxpr: ClosedJaxpr, used_outputs: Sequence[bool]) -> tuple[ClosedJaxpr, list[bool]]:
    """Dead-code eliminate ``jaxpr`` keeping only ``used_outputs``.

    Returns the pruned closed jaxpr (same invars) and, per invar, whether it is
    still read. Dependence is syntactic, hence sound: an unused invar can never
    influence the kept outputs.
    """
    new, used_inputs = _pe.dce_jaxpr(jaxpr.jaxpr, list(used_outputs), instantiate=False)
    # dce_jaxpr drops unused invars; rebuild with all invars so callers keep arity.
    full = Jaxpr(jaxpr.jaxpr.constvars, jaxpr.jaxpr.invars, new.outvars, new.eqns, new.effects)
    return ClosedJaxpr(full, jaxpr.consts), list(used_inputs)


def is_literal(atom: Any) -> bool:
    return isinstance(atom, Literal)


def literal_value(atom: Any) -> Any:
    return atom.val


def aval_of(atom: Any) -> Any:
    return atom.aval


def bind_eqn(eqn: JaxprEqn, values: Sequence[Any]) -> list[Any]:
    """Evaluate one equation on concrete (or traced) operand values; always returns a list."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


#: Primitive names of a ``jax.custom_vjp`` call in a jaxpr (the name has changed across JAX versions).
CUSTOM_VJP_PRIMITIVES = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})


def custom_vjp_names(closed_jaxpr: ClosedJaxpr | Jaxpr) -> list[str]:
    """Names of the ``jax.custom_vjp`` functions called in ``closed_jaxpr``, sub-jaxprs included.

    JAX cannot push forward-mode tangents through these; an empty list means it can.
    """
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    out: list[str] = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in CUSTOM_VJP_PRIMITIVES:
            sub = eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
            info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
            name = eqn.params.get("name") or getattr(info, "func_name", None) or "<custom_vjp>"
            out.append(str(name))
        for sub in jaxprs_in_params(eqn.params):
            out.extend(n for n in custom_vjp_names(sub) if n not in out)
    return out


def has_custom_vjp(closed_jaxpr: ClosedJaxpr | Jaxpr) -> bool:
    """Whether ``closed_jaxpr`` calls a ``jax.custom_vjp`` function anywhere (no forward mode then)."""
    return bool(custom_vjp_names(closed_jaxpr))
