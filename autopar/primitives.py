"""The primitive trait table: one row per JAX primitive, read by every interpreter.

A row (``Traits``) says what autopar knows about a primitive, by *family* — so that most
primitives need no code at all — plus per-domain rule slots where a family is not enough:

* ``dataflow`` — which operand elements an output element reads:
  ``elementwise`` (element e reads element e of each operand; operands broadcast from scalars),
  ``structural`` (moves elements without arithmetic: reshape, broadcast, transpose, slice,
  concatenate, pad, …), ``reduction`` (over ``params["axes"]``), ``cumulative`` (along
  ``params["axis"]``), ``contraction`` (dot_general, conv), ``indexing`` (gather, scatter,
  dynamic slices: ``index_operands`` are the operands that say *where*), ``sort``,
  ``nullary`` (iota), ``call`` (one sub-jaxpr run once on the operands: jit, custom_jvp, …),
  ``control-flow`` (cond, scan, while), ``other``.
* ``degree`` — how the outputs depend on the data operands (the degree lattice of
  ``passes.linearity``): ``linear`` (linear in each operand: sums, shape ops), ``bilinear``
  (linear in each operand separately: mul, dot_general), ``piecewise`` (piecewise-linear:
  max, abs, sort), ``step`` (piecewise-constant, zero derivative: floor, comparisons, integer
  bit operations), ``smooth`` (smooth nonlinear: exp, tanh), ``rule`` (a ``degree`` slot
  decides: div, select_n, …), or None (unknown: treated as nonlinear).
* flags: ``zero_derivative`` (JAX's derivative is zero: step functions, stop_gradient),
  ``selects`` (each output element is a copy of the operand-0 element at a position fixed by
  the params and index operands, never by the values: reshape, slice, gather, …),
  ``polynomial`` (maps polynomials to polynomials on all of R: the sympy check),
  ``int_affine`` (a ring operation on integers: the discrete-state pass), ``holomorphic``
  (complex-differentiable), ``may_round`` (can lower a float operand's precision:
  ``passes.precision``), ``transcendental`` and ``kernel`` (step costs: ``autopar.costs``),
  ``custom`` ("jvp" / "vjp" for calls with user derivative rules).
* ``rules`` — per-domain slots ``{domain: rule}`` for what the family does not say (the
  sparsity of ``dot_general`` with a known operand, the constant folder of ``gather``, …).
  Each interpreter module fills its own slots beside its rules with ``defrule``; a domain
  falls back to its family rule, then to its conservative default.

Adding a primitive is one row (``defprims``); user rules from ``autopar.passes.register_rule``
are written into the same table (``set_user_rule``) and take precedence over built-in slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

__all__ = ["Traits", "TABLE", "row", "defprims", "defrule", "set_user_rule", "clear_user_rule", "user_entries",
           "version", "DATAFLOWS", "DEGREES", "names_where"]

DATAFLOWS = ("elementwise", "structural", "reduction", "cumulative", "contraction", "indexing", "sort", "nullary",
             "call", "control-flow", "other")
DEGREES = ("linear", "bilinear", "piecewise", "step", "smooth", "rule", None)


@dataclasses.dataclass
class Traits:
    name: str
    dataflow: str | None = None
    degree: str | None = None
    zero_derivative: bool = False
    index_operands: slice | None = None
    selects: bool = False
    polynomial: bool = False
    int_affine: bool = False
    holomorphic: bool = True
    may_round: bool = False
    transcendental: bool = False
    kernel: bool = False
    custom: str | None = None
    #: built-in slots, ``{domain: rule}`` (filled by the interpreter modules with ``defrule``)
    rules: dict[str, Callable] = dataclasses.field(default_factory=dict)
    #: user specs from ``register_rule``: ``{"sparsity": spec, "degree": spec}``
    user: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: a row autopar ships (False: created by ``register_rule`` for an unknown primitive)
    builtin: bool = True

    @property
    def elementwise(self) -> bool:
        return self.dataflow == "elementwise"

    @property
    def multilinear(self) -> bool:
        """Linear in each operand separately (so linear in a single h-dependent operand)."""
        return self.degree in ("linear", "bilinear")


TABLE: dict[str, Traits] = {}
_VERSION = [0]


def version() -> int:
    """Bumped on every change of the table (domains cache the rule dicts they build from it)."""
    return _VERSION[0]


def row(name: str) -> Traits | None:
    return TABLE.get(name)


def names_where(pred: Callable[[Traits], bool]) -> frozenset:
    return frozenset(n for n, t in TABLE.items() if pred(t))


def defprims(names: str | Iterable[str], dataflow: str, degree: str | None, **traits: Any) -> None:
    """One row per name (a whitespace-separated string or an iterable) with these traits."""
    if dataflow not in DATAFLOWS or degree not in DEGREES:
        raise ValueError(f"defprims: unknown dataflow {dataflow!r} or degree {degree!r}")
    for n in names.split() if isinstance(names, str) else names:
        if n in TABLE and TABLE[n].builtin:
            raise ValueError(f"primitive {n!r} already has a row")
        TABLE[n] = Traits(n, dataflow, degree, **traits)
    _VERSION[0] += 1


def defrule(domain: str, *names: str) -> Callable[[Callable], Callable]:
    """Decorator: ``rule`` fills the ``domain`` slot of the rows ``names``."""

    def put(rule: Callable) -> Callable:
        for n in names:
            if n not in TABLE:
                raise KeyError(f"defrule({domain!r}): no row for primitive {n!r}; add one with defprims")
            TABLE[n].rules[domain] = rule
        _VERSION[0] += 1
        return rule

    return put


def set_user_rule(name: str, entry: dict[str, Any]) -> None:
    t = TABLE.get(name)
    if t is None:
        t = TABLE[name] = Traits(name, builtin=False)
    t.user = dict(entry)
    _VERSION[0] += 1


def clear_user_rule(name: str) -> None:
    t = TABLE[name]
    if t.builtin:
        t.user = {}
    else:
        del TABLE[name]
    _VERSION[0] += 1


def user_entries() -> dict[str, dict[str, Any]]:
    return {n: t.user for n, t in TABLE.items() if t.user}


# ---- the rows ---------------------------------------------------------------------------------
_TRANSCENDENTAL = dict(transcendental=True)

# elementwise, linear in each operand
defprims("add sub neg add_any", "elementwise", "linear", polynomial=True, int_affine=True)
defprims("convert_element_type", "elementwise", "linear", polynomial=True, int_affine=True, may_round=True)
defprims("copy copy_p", "elementwise", "linear", polynomial=True, int_affine=True, selects=True)
defprims("real imag conj", "elementwise", "linear", holomorphic=False)
defprims("complex", "elementwise", "linear")
defprims("reduce_precision", "elementwise", "linear", may_round=True)
# elementwise, bilinear / smooth / piecewise-linear / step / decided by a degree rule
defprims("mul", "elementwise", "bilinear", polynomial=True, int_affine=True)
defprims("""exp exp2 expm1 log log1p tanh logistic sin cos tan asin acos atan asinh acosh atanh sinh cosh sqrt
    rsqrt cbrt erf erfc erf_inv lgamma digamma pow atan2""", "elementwise", "smooth", **_TRANSCENDENTAL)
defprims("square", "elementwise", "smooth", polynomial=True)
defprims("""igamma igammac polygamma zeta bessel_i0e bessel_i1e nextafter random_gamma_grad
    regularized_incomplete_beta""", "elementwise", "smooth")
defprims("max min abs", "elementwise", "piecewise", holomorphic=False)
defprims("clamp", "elementwise", "piecewise")
defprims("sign gt ge lt le eq ne", "elementwise", "step", zero_derivative=True, holomorphic=False)
defprims("""floor ceil round is_finite not and or xor population_count clz shift_left shift_right_arithmetic
    shift_right_logical""", "elementwise", "step", zero_derivative=True)
defprims("div integer_pow", "elementwise", "rule", polynomial=True)
defprims("select_n", "elementwise", "rule", int_affine=True)
defprims("rem", "elementwise", "rule")
defprims("stop_gradient", "elementwise", "rule", zero_derivative=True)
# structural: move elements without arithmetic
defprims("broadcast_in_dim reshape squeeze expand_dims transpose slice rev", "structural", "linear", selects=True,
         polynomial=True, int_affine=True)
defprims("concatenate", "structural", "linear", polynomial=True, int_affine=True)
defprims("pad split", "structural", "linear")
# reductions and cumulative ops
defprims("reduce_sum", "reduction", "linear", polynomial=True, kernel=True)
defprims("reduce_max reduce_min", "reduction", "piecewise", kernel=True)
defprims("reduce_prod", "reduction", "smooth", kernel=True)
defprims("reduce_and reduce_or argmax argmin", "reduction", "step", zero_derivative=True, kernel=True)
defprims("cumsum", "cumulative", "linear", kernel=True)
defprims("cumprod cumlogsumexp", "cumulative", "smooth", kernel=True)
defprims("cummax cummin", "cumulative", "piecewise", kernel=True)
# contractions
defprims("dot_general", "contraction", "bilinear", polynomial=True, kernel=True, may_round=True)
defprims("conv_general_dilated", "contraction", "bilinear", kernel=True, may_round=True)
defprims("ragged_dot ragged_dot_general", "contraction", None, may_round=True)
# indexing: operands at ``index_operands`` say where to read / write
_IDX1 = slice(1, 2)
defprims("gather", "indexing", "linear", index_operands=_IDX1, selects=True, kernel=True)
defprims("dynamic_slice", "indexing", "linear", index_operands=slice(1, None), selects=True)
defprims("dynamic_update_slice", "indexing", "linear", index_operands=slice(2, None))
defprims("scatter scatter-add scatter_add", "indexing", "linear", index_operands=_IDX1, kernel=True)
defprims("scatter-sub scatter_sub", "indexing", "linear", index_operands=_IDX1)
defprims("scatter-mul scatter_mul", "indexing", "bilinear", index_operands=_IDX1)
defprims("scatter-min scatter-max scatter_min scatter_max", "indexing", "piecewise", index_operands=_IDX1)
defprims("select_and_gather_add", "other", "linear")
defprims("sort", "sort", "piecewise", kernel=True)
defprims("top_k", "sort", "piecewise")
defprims("iota", "nullary", "step", zero_derivative=True)
# calls: one closed sub-jaxpr under params["jaxpr" | "call_jaxpr" | "fun_jaxpr"], run once on the operands
defprims("jit pjit closed_call core_call remat remat2 checkpoint", "call", None, polynomial=True)
defprims("custom_jvp_call", "call", None, custom="jvp")
defprims("custom_vjp_call custom_vjp_call_jaxpr", "call", None, custom="vjp")
defprims("custom_lin", "call", None)
defprims("cond scan while", "control-flow", None)
# library kernels autopar has no analysis rule for (conservative in every domain; priced as kernels)
defprims("fft triangular_solve cholesky lu eigh qr svd custom_linear_solve", "other", None, kernel=True)
