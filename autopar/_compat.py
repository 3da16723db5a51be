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

from . import primitives as _prims

ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
Var = jex_core.Var
DropVar = jex_core.DropVar
Primitive = jex_core.Primitive

eval_jaxpr = jax.core.eval_jaxpr
jaxpr_as_fun = jex_core.jaxpr_as_fun
#: The class of JAX tracers (a value inside jit / vmap / grad).
Tracer = jax.core.Tracer
#: ``concrete_or_error(force, value, context)``: a Python value from a concrete JAX value, or JAX's
#: ConcretizationTypeError naming ``context``.
concrete_or_error = jex_core.concrete_or_error
jaxprs_in_params = jex_core.jaxprs_in_params


def make_jaxpr(fun: Callable, *example_args: Any) -> ClosedJaxpr:
    """Trace ``fun`` abstractly on ``example_args`` (arrays or ShapeDtypeStructs)."""
    return jax.make_jaxpr(fun)(*example_args)


def call_subjaxpr(eqn: JaxprEqn) -> ClosedJaxpr | None:
    """The closed jaxpr a call-like equation runs on its operands, or None.

    Only primitives of the ``call`` family (``autopar.primitives``) are calls: ``scan`` also keeps its body under
    ``jaxpr`` (and ``shard_map`` its per-shard body), but running that body once on the
    equation's operands is *not* what the equation computes (a scan iterates it over slices
    of ``xs``), so treating it as a call gives wrong values and shapes.
    """
    t = _prims.TABLE.get(eqn.primitive.name)
    if t is None or t.dataflow != "call":
        return None
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


# ---- the one jaxpr evaluator ------------------------------------------------------------
class Interpreter:
    """What ``evaluate`` does at each step of a walk over a jaxpr; the default evaluates it.

    Subclasses carry their own values (abstract lattice values, (value, Jacobian terms) pairs,
    sympy arrays, …) and override the hooks they need.
    """

    def literal(self, atom: Literal) -> Any:
        """The value of a literal operand."""
        return atom.val

    def const(self, var: Var, value: Any) -> Any:
        """The value of a constvar bound to the closed-over constant ``value``."""
        return value

    def enters(self, eqn: JaxprEqn, ins: Sequence[Any]) -> bool:
        """Whether to evaluate a call-like equation by walking its sub-jaxpr (``call_subjaxpr``)
        on ``ins`` instead of ``equation``: the one hook through which every walk recurses."""
        return False

    def equation(self, eqn: JaxprEqn, ins: Sequence[Any]) -> list[Any]:
        """The outputs of ``eqn`` (one per outvar) from its operands' values."""
        return bind_eqn(eqn, ins)


def evaluate(jaxpr: ClosedJaxpr | Jaxpr, args: Sequence[Any], interp: Interpreter,
             consts: Sequence[Any] | None = None) -> list[Any]:
    """Walk ``jaxpr`` on ``args`` with ``interp``: reads literals and constvars through its hooks,
    recurses into call sub-jaxprs it ``enters``, skips DropVar outputs. ``consts``: values for the
    constvars (default: ``interp.const`` of the closed jaxpr's constants)."""
    jp = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    if len(args) != len(jp.invars):
        raise ValueError(f"evaluate: {len(args)} arguments for {len(jp.invars)} invars")
    env: dict[Any, Any] = {}
    if consts is None:
        consts = [interp.const(v, c) for v, c in zip(jp.constvars, getattr(jaxpr, "consts", ()))]
    env.update(zip(jp.constvars, consts))
    env.update(zip(jp.invars, args))
    literal = interp.literal

    def read(atom):
        return literal(atom) if isinstance(atom, Literal) else env[atom]

    for eqn in jp.eqns:
        ins = [read(a) for a in eqn.invars]
        sub = call_subjaxpr(eqn)
        if sub is not None and len(sub.jaxpr.invars) == len(ins) and interp.enters(eqn, ins):
            outs = evaluate(sub, ins, interp)
        else:
            outs = interp.equation(eqn, ins)
        if len(outs) != len(eqn.outvars):
            raise ValueError(f"rule for {eqn.primitive.name!r} returned {len(outs)} values for {len(eqn.outvars)} outputs")
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, DropVar):
                env[v] = o
    return [read(v) for v in jp.outvars]


# ---- custom derivatives -----------------------------------------------------------------
def is_custom_jvp(eqn: JaxprEqn) -> bool:
    t = _prims.TABLE.get(eqn.primitive.name)
    return t is not None and t.custom == "jvp"


def is_custom_vjp(eqn: JaxprEqn) -> bool:
    t = _prims.TABLE.get(eqn.primitive.name)
    return t is not None and t.custom == "vjp"


def call_name(eqn: JaxprEqn) -> str:
    """A human name of a call-like equation (the decorated function's name when known)."""
    p = eqn.params
    if isinstance(p.get("name"), str):
        return p["name"]
    for key in ("call_jaxpr", "fun_jaxpr", "jaxpr"):
        sub = p.get(key)
        jp = getattr(sub, "jaxpr", sub)
        dbg = getattr(jp, "debug_info", None)
        name = getattr(dbg, "func_name", None)
        if isinstance(name, str) and name:
            return name
    return eqn.primitive.name


_JVP_CACHE: dict[int, tuple[Any, Any]] = {}


def custom_jvp_rule(eqn: JaxprEqn) -> tuple[ClosedJaxpr, list[bool], int] | None:
    """The JVP rule of a ``custom_jvp_call`` equation as a jaxpr, or None if unavailable.

    Returns ``(jvp, out_zeros, num_consts)``: ``jvp`` maps ``(*primals, *tangents)`` — the
    call's operands after its ``num_consts`` leading constants, then one tangent per such
    operand (all requested nonzero) — to ``(*primal_outs, *nonzero_tangent_outs)``;
    ``out_zeros[k]`` says that output k's tangent is a symbolic zero (it then has no tangent
    output). This is the rule every JAX derivative (jvp, linearize, vjp) of the call uses.
    """
    if not is_custom_jvp(eqn):
        return None
    fun = eqn.params.get("jvp_jaxpr_fun")
    if fun is None:
        fun = eqn.params.get("jvp_jaxpr_thunk")
    if fun is None:
        return None
    hit = _JVP_CACHE.get(id(fun))
    if hit is not None and hit[0] is fun:
        return hit[1]
    n_consts = int(eqn.params.get("num_consts", 0))
    n = len(eqn.invars) - n_consts
    try:
        call = getattr(fun, "call_wrapped", fun)
        jaxpr, consts, out_zeros = call(*([False] * n))
        closed = jaxpr if isinstance(jaxpr, ClosedJaxpr) else ClosedJaxpr(jaxpr, list(consts))
        out_zeros = [bool(z) for z in out_zeros]
        n_out = len(eqn.outvars)
        ok = (len(closed.jaxpr.invars) == 2 * n and len(out_zeros) == n_out
              and len(closed.jaxpr.outvars) == n_out + sum(not z for z in out_zeros))
        res = (closed, out_zeros, n_consts) if ok else None
    except Exception:  # noqa: BLE001 - callers fall back to a conservative rule
        res = None
    if len(_JVP_CACHE) > 4096:
        _JVP_CACHE.clear()
    _JVP_CACHE[id(fun)] = (fun, res)
    return res


def inline_custom_vjp(closed_jaxpr: ClosedJaxpr) -> ClosedJaxpr:
    """``closed_jaxpr`` with every ``custom_vjp_call`` / ``custom_vjp_call_jaxpr`` replaced by
    its primal function, recursively (also inside jit, cond, scan, while, checkpoint, …).

    The result computes the same values; differentiating it differentiates the primal (the
    custom backward rule is dropped), so ``jax.jvp`` / ``jax.linearize`` / ``jax.jacfwd``
    work on it — e.g. to linearise a cell with gradient clipping for Newton's method.
    """
    closed = closed_jaxpr if isinstance(closed_jaxpr, ClosedJaxpr) else ClosedJaxpr(closed_jaxpr, ())
    if not _has_custom_vjp(closed.jaxpr):
        return closed

    def run(*args):
        return _eval_inlined(closed.jaxpr, closed.consts, args)

    avals = [v.aval for v in closed.jaxpr.invars]
    out = jax.make_jaxpr(run)(*[jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False))
                                for a in avals])
    return out


def has_custom_vjp(jaxpr: ClosedJaxpr | Jaxpr) -> bool:
    """Whether ``jaxpr`` calls a custom_vjp anywhere (nested calls and loops included)."""
    return _has_custom_vjp(jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr)


def eval_jaxpr_inlined(jaxpr: Jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
    """``eval_jaxpr`` with every custom_vjp call replaced by its primal (see ``inline_custom_vjp``)."""
    jp = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    if not _has_custom_vjp(jp):
        return list(eval_jaxpr(jp, list(consts), *args))
    return _eval_inlined(jp, list(consts), args)


def _has_custom_vjp(jaxpr: Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if is_custom_vjp(eqn):
            return True
        for sub in jaxprs_in_params(eqn.params):
            if _has_custom_vjp(getattr(sub, "jaxpr", sub)):
                return True
    return False


class _Inliner(Interpreter):
    """Evaluates a jaxpr with every custom_vjp call replaced by its primal (entered)."""

    def enters(self, eqn, ins):
        return is_custom_vjp(eqn)

    def equation(self, eqn, ins):
        if any(_has_custom_vjp(getattr(s, "jaxpr", s)) for s in jaxprs_in_params(eqn.params)):
            eqn = _replace_subjaxprs(eqn)
        return bind_eqn(eqn, ins)


def _eval_inlined(jaxpr: Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    return evaluate(jaxpr, list(args), _Inliner(), consts=list(consts))


def _replace_subjaxprs(eqn: JaxprEqn) -> JaxprEqn:
    """``eqn`` with custom_vjp calls inlined in the sub-jaxprs of its params."""

    def fix(val):
        if isinstance(val, ClosedJaxpr):
            return inline_custom_vjp(val)
        if isinstance(val, Jaxpr):
            new = inline_custom_vjp(ClosedJaxpr(val, ()))
            if new.consts:
                raise NotImplementedError("inline_custom_vjp: an open sub-jaxpr acquired constants")
            return new.jaxpr
        if isinstance(val, (tuple, list)) and any(isinstance(x, (ClosedJaxpr, Jaxpr)) for x in val):
            return type(val)(fix(x) for x in val)
        return val

    params = {k: fix(v) for k, v in eqn.params.items()}
    return eqn.replace(params=params)


def varying_axes(x: Any) -> frozenset:
    """The manual mesh axes ``x`` varies over inside ``shard_map`` (its check_vma type); empty outside
    or with check_vma=False. JAX 0.10 names it ``manual_axis_type.varying`` (older: ``vma``)."""
    t = jax.typeof(x)
    mat = getattr(t, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(t, "vma", frozenset()))


def manual_axes() -> tuple:
    """The mesh axes the enclosing ``shard_map`` is manual over (empty outside one)."""
    try:
        m = jax.sharding.get_abstract_mesh()
    except Exception:  # noqa: BLE001 - no mesh context
        return ()
    return tuple(getattr(m, "manual_axes", ()) or ())
