"""Extending autopar with a solver: Picard (Jacobi) fixed-point sweeps, registered by the user.

A Picard sweep updates every step at once from the previous iterate,

    v_t ← f(v_{t−1}, x_t)   for all t in parallel,

so the sweep is one vmapped step (depth 1, no Jacobian). Sweep k makes step k exact, so T sweeps
are exact; a contracting cell gets to tolerance in far fewer. The solver is one class and one
``register_solver``: the planner prices it by its own ``cost()``, ``explain()`` lists it, its
option ``picard_max_sweeps`` is accepted by ``parallelize``, and gradients come from autopar's
implicit adjoint like every other solver's. See "Adding a solver" in docs/solvers.md.

Run: PYTHONPATH=. python3 examples/custom_solver.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import autopar
from autopar.solvers import Prediction, Solver, Stats, pricing, register_solver


@register_solver
class Picard(Solver):
    name = "picard"
    parallel = True  # declined when the recurrence has no parallel form (mixed real/complex state, …)
    exact = False  # stops at a tolerance
    options = frozenset({"picard_max_sweeps"})
    description = "Picard sweeps: one vmapped step each, no Jacobian"

    #: Sweeps the planner assumes: a contracting cell with rate ρ needs ≈ log(tol)/log(ρ).
    PREDICTED_SWEEPS = 30

    def applies(self, facts, rec):
        if not jnp.issubdtype(rec.layout.vec_dtype, jnp.floating):
            return False, "Picard sweeps need a real floating-point state"
        return True, "fixed-point sweeps; converge for contracting cells"

    def cost(self, facts, rec, K):
        T, D, isz, cplx, xb, _ = pricing.sizes(rec)
        fl = pricing.flops(facts, cplx)
        sweeps = float(min(T, self.PREDICTED_SWEEPS))
        t = K.parallel_overhead + sweeps * pricing.residual(T, D, fl, isz, xb, K)
        return Prediction(time=t, memory=3.0 * T * D * isz, iterations=sweeps, work=sweeps * T * fl, depth=sweeps)

    def solve(self, problem):
        T, D = problem.length, problem.v0.shape[0]
        if T == 0:
            return jnp.zeros((0, D), problem.dtype), Stats(jnp.asarray(0, jnp.int32), jnp.asarray(True))
        max_sweeps = problem.options.get("picard_max_sweeps") or T  # T sweeps are exact
        tol = problem.options.get("tol") or 32 * float(jnp.finfo(problem.dtype).eps)
        step = jax.vmap(problem.f)

        def cond(c):
            i, _, err = c
            return (i < max_sweeps) & (err > tol)

        def body(c):
            i, V, _ = c
            Vn = step(jnp.concatenate([problem.v0[None], V[:-1]], axis=0), problem.xt)
            return i + 1, Vn, jnp.max(jnp.abs(Vn - V) / (1 + jnp.abs(Vn)))

        init = (jnp.asarray(0, jnp.int32), jnp.zeros((T, D), problem.dtype), jnp.asarray(jnp.inf, problem.dtype))
        sweeps, V, err = jax.lax.while_loop(cond, body, init)
        return V, Stats(sweeps, err <= tol)


# A solver that does not say what it costs is refused, never priced as if it were Newton's.
class Unpriced(Solver):
    name = "unpriced"

    def applies(self, facts, rec):
        return True, ""


try:
    register_solver(Unpriced)
except TypeError as e:
    print(f"refused: {e}\n")


# ---- a contracting cell ------------------------------------------------------------------------
D, T = 8, 256
rng = np.random.default_rng(0)
W = jnp.asarray(rng.standard_normal((D, D)) / (2 * np.sqrt(D)), jnp.float32)  # ‖W‖ ≈ 0.5: contracting


def cell(h, x):
    return jnp.tanh(h @ W + x)


h0 = jnp.zeros(D, jnp.float32)
xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)


def scan_ref(h0, xs):
    return jax.lax.scan(lambda h, x: (cell(h, x), cell(h, x)), h0, xs)[1]


# the planner lists it, with its own predicted numbers
report = autopar.parallelize(cell).explain(h0, xs)
print(report)
row = next(c for c in report.candidates if c.solver == "picard")
assert row.applies and row.iterations == Picard.PREDICTED_SWEEPS, row
assert "Picard sweeps" in str(report)

# forced, with its own option, checked against lax.scan — values and gradients
fn = autopar.parallelize(cell, solver="picard", picard_max_sweeps=T)
hs, info = fn(h0, xs, return_info=True)
ref = scan_ref(h0, xs)
err = float(jnp.max(jnp.abs(hs - ref)))
print(f"\npicard: {int(info.iterations)} sweeps, converged={bool(info.converged)}, max |hs - lax.scan| = {err:.2e}")
assert bool(info.converged) and err < 1e-5, err


def loss(run):
    return lambda h0, xs: jnp.sum(jnp.sin(run(h0, xs)))


g, g_ref = jax.grad(loss(fn), argnums=(0, 1))(h0, xs), jax.grad(loss(scan_ref), argnums=(0, 1))(h0, xs)
gerr = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, g_ref))
print(f"gradients (implicit adjoint, backward={info.backward!r}): max |grad - lax.scan's| = {gerr:.2e}")
assert gerr < 1e-4, gerr
print("the custom solver matches lax.scan")
