"""Extending autopar's structure lattice: the monomial kind at work, and a kind of your own.

1. A rolled state, ``h_new = tanh(w ⊙ roll(h, 1) + x)``: J = P·diag(a) is a generalised
   permutation. The analysis proves the *monomial* kind (one JVP per step, O(D) composition)
   instead of dense; every solver and the adjoint use its algebra unchanged.
2. A user kind: lower-triangular J (a causal cell: element i reads only elements ≤ i, e.g. a
   cumulative sum). One class — its recogniser, its name, its cost — and one
   ``register_kind`` line; the solvers get it for free (the algebra is inherited from dense).

Run: PYTHONPATH=. python3 examples/custom_kind.py
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import autopar
from autopar.structure import Dense, register_kind

jax.config.update("jax_enable_x64", True)

D, T = 6, 9
rng = np.random.default_rng(0)
xs = jnp.asarray(rng.normal(size=(T, D)))
h0 = jnp.zeros(D)
w = jnp.linspace(0.5, 0.9, D)


def lax_scan(cell):
    return jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs)[1]


# ---- 1. the monomial kind -------------------------------------------------------------------
def rolled(h, x):
    return jnp.tanh(w * jnp.roll(h, 1) + x)


fn = autopar.parallelize(rolled, solver="deer")
report = fn.explain(h0, xs)
print(report.structure.describe())
assert report.structure.kind == "monomial"
hs, info = fn(h0, xs, return_info=True)
err = float(jnp.max(jnp.abs(hs - lax_scan(rolled))))
print(f"deer on the rolled cell: {int(info.iterations)} iterations, max |error| vs lax.scan = {err:.1e}")
assert err < 1e-9


# ---- 2. a kind of your own ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LowerTriangular(Dense):
    """J lower-triangular (causal). Stored and composed as dense (the inherited algebra); the
    kind says so in the report and prices a combine at a third of dense's."""

    kind: ClassVar[str] = "lower-triangular"
    order: ClassVar[int] = 50  # after block-diagonal, before dense

    @classmethod
    def recognise(cls, pattern, facts):
        D = pattern.shape[0]
        return cls(D) if D > 1 and not np.triu(pattern, 1).any() else None

    def pattern(self):
        return np.tril(np.ones((self.size, self.size), bool))

    def compose_flops(self, rows=1):
        return self.size**3 / 3.0


register_kind(LowerTriangular)  # the one registration line


def causal(h, x):
    return jnp.tanh(0.5 * jnp.cumsum(h) / (1.0 + jnp.arange(D)) + x)


fn = autopar.parallelize(causal, solver="deer")
report = fn.explain(h0, xs)
print(report.structure.describe())
assert report.structure.kind == "lower-triangular"
hs = fn(h0, xs)
err = float(jnp.max(jnp.abs(hs - lax_scan(causal))))
print(f"deer on the causal cell: max |error| vs lax.scan = {err:.1e}")
assert err < 1e-9
print(report)
