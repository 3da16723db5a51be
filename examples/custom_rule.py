"""Adding a primitive rule: teach the analysis a primitive it has never seen.

``pairswap`` is a custom JAX primitive that swaps neighbouring entries, (h0, h1, h2, h3, …) →
(h1, h0, h3, h2, …). autopar has no row for it in its primitive table, so the analysis must
assume the worst — every output depends on every input, nonlinearly — and the report names
it as handled conservatively: the cell looks dense and nonlinear, and a Newton solver runs.

One ``register_rule`` call is the user's "one row": a sparsity rule (output i reads input
i ^ 1; a callable on boolean dependency arrays) and a degree ("linear": the swap is linear in
its operand). The same cell is then proven affine with a monomial J (a permutation times a diagonal), the
linear solver is exact, and ``check=True`` verifies the rule against ``jax.jacfwd`` once.
A primitive that belongs in autopar itself gets the same row in ``autopar/primitives.py``
(see docs/passes.md, "Adding a primitive rule").

Run: PYTHONPATH=. python3 examples/custom_rule.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import autopar

# ---- the custom primitive: swap neighbouring entries along the last axis ------------------
pairswap_p = Primitive("pairswap")


def _pairswap_impl(x):
    return x.reshape(x.shape[:-1] + (-1, 2))[..., ::-1].reshape(x.shape)


pairswap_p.def_impl(_pairswap_impl)
pairswap_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(pairswap_p, mlir.lower_fun(_pairswap_impl, multiple_results=False))
ad.deflinear(pairswap_p, lambda g: [pairswap(g)])  # its own transpose


def _pairswap_batch(args, dims):
    (x,), (d,) = args, dims
    return pairswap(jnp.moveaxis(x, d, 0)), 0  # acts on the last axis: any other batch axis is fine


batching.primitive_batchers[pairswap_p] = _pairswap_batch


def pairswap(x):
    return pairswap_p.bind(x)


# ---- the rule: output element i reads input element i ^ 1 ---------------------------------
def pairswap_sparsity(eqn, deps):
    """``deps[0]``: bool (operand shape + (D,)), which state elements each operand element reads."""
    d = deps[0]
    n = d.shape[-2]
    return [d.reshape(d.shape[:-2] + (n // 2, 2, d.shape[-1]))[..., ::-1, :].reshape(d.shape)]


w = jnp.linspace(0.2, 0.8, 8)


def cell(h, x):
    return 0.9 * pairswap(w * h) + x


def main():
    with autopar.config.override(planner_backend="gpu"):  # price as on a GPU, where parallel scans pay off
        return _main()


def _main():
    h0 = jnp.zeros(8)
    xs = jax.random.normal(jax.random.PRNGKey(0), (64, 8))

    before = autopar.parallelize(cell).explain(h0, xs)
    print("without a rule:", before.structure.describe(), "|", before.degree, "| solver", before.solver,
          "| conservative:", before.conservative)

    autopar.passes.register_rule("pairswap", sparsity=pairswap_sparsity, degree="linear")
    try:
        fn = autopar.parallelize(cell, check=True)  # check=True: verify the rule against jax.jacfwd once
        report = fn.explain(h0, xs)
        print("with the rule: ", report.structure.describe(), "|", report.degree, "| solver", report.solver,
              "| conservative:", report.conservative)
        hs = fn(h0, xs)
        ref = jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]
        print("max |autopar - lax.scan| =", float(jnp.max(jnp.abs(hs - ref))))
        print("\nits report:")
        print(report)
        return before, report, np.asarray(hs), np.asarray(ref)
    finally:
        autopar.passes.unregister_rule("pairswap")


if __name__ == "__main__":
    main()
