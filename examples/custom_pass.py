"""Extending autopar's analysis: a rule for a custom primitive, and a user pass.

1. A cell uses ``softsign``, a primitive autopar has never heard of. Without a rule the
   analysis must assume it mixes everything (dense J) and says so in the report.
   ``autopar.passes.register_rule`` teaches it that softsign is elementwise and nonlinear:
   the cell is then proven diagonal and solved with one JVP per step.
2. A user pass recognises the user's own structure from the proven sparsity: the bandwidth
   of J (a tridiagonal cell has bandwidth 1). It declares what it requires and provides,
   and the pass manager runs it after the sparsity pass.

Run: PYTHONPATH=. python3 examples/custom_pass.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, mlir

import autopar
from autopar.passes import Pass

# ---- a custom primitive: softsign(x) = x / (1 + |x|) -------------------------------------
softsign_p = Primitive("softsign")


def _softsign_impl(x):
    return x / (1 + jnp.abs(x))


softsign_p.def_impl(_softsign_impl)
softsign_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(softsign_p, mlir.lower_fun(_softsign_impl, multiple_results=False))
ad.defjvp(softsign_p, lambda g, x: g / (1 + jnp.abs(x)) ** 2)


def softsign(x):
    return softsign_p.bind(x)


w = jnp.linspace(0.1, 0.9, 8)


def cell(h, x):
    return softsign(w * h + x)


# ---- a user pass: bandwidth of J from the proven sparsity ---------------------------------
class BandwidthPass(Pass):
    """Provides ``bandwidth``: max |i - j| over entries J[i, j] that may be nonzero."""

    name = "bandwidth"
    requires = ("sparsity",)
    provides = ("bandwidth",)
    refines = ("notes",)  # another pass's fact, which this one extends

    def run(self, rec, facts):
        i, j = np.nonzero(facts["sparsity"])
        bw = int(np.max(np.abs(i - j))) if len(i) else 0
        return {"bandwidth": bw, "notes": list(facts.get("notes", [])) + [f"bandwidth of J: {bw}"]}


def tridiagonal(h, x):
    return jnp.tanh(0.5 * h + 0.2 * jnp.roll(h, 1).at[0].set(0.0) + 0.2 * jnp.roll(h, -1).at[-1].set(0.0) + x)


def main():
    h0 = jnp.zeros(8)
    xs = jax.random.normal(jax.random.PRNGKey(0), (64, 8))

    before = autopar.parallelize(cell).explain(h0, xs)
    print("without a rule:", before.structure.describe(), "| conservative:", before.conservative)

    autopar.passes.register_rule("softsign", sparsity="elementwise", degree="nonlinear")
    autopar.passes.register(BandwidthPass)
    try:
        fn = autopar.parallelize(cell, check=True)  # check=True: verify the facts against jax.jacfwd once
        report = fn.explain(h0, xs)
        print("with the rule: ", report.structure.describe(), "| conservative:", report.conservative)
        hs = fn(h0, xs)
        ref = jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]
        print("max |autopar - lax.scan| =", float(jnp.max(jnp.abs(hs - ref))))

        tri = autopar.parallelize(tridiagonal).explain(h0, xs)
        print("tridiagonal cell: bandwidth", tri.facts["bandwidth"], "|", tri.structure.describe())
        print("\nits report (the user pass's fact is listed with the built-in ones):")
        print(tri)
        return before, report, tri, hs, ref
    finally:
        autopar.passes.unregister_rule("softsign")
        autopar.passes.unregister("bandwidth")


if __name__ == "__main__":
    main()
