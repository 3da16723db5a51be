r"""The residual measure, tolerances and initial guesses shared by the iterative
(Newton-family) solvers.

**Residual, per element.** For a trajectory V = (v_1..v_T) the one-step defect is
r_t = v_t − f(v_{t−1}, x_t) (v_0 given). Each element is judged against its own scale,

    res(V) = max_{t,i} |r_{t,i}| / s_{t,i},
    s_{t,i} = |v_{t,i}| + (|J_t|·|v_{t−1}|)_i + |∂f/∂x_t · |x_t||_i,

with |J_t| the entrywise modulus of the Jacobian the stage linearises with (its proven
structure for deer / elk, diag(J_t) for the quasi solvers; ``Structure.abs_matvec``).
The second and third terms are the magnitude of what flows into element i from the state
and from the input (``input_inflow``, a lower bound of |∂f/∂x|·|x|), so a small element
computed from large ones (float32 cancellation: v_i = h_j − h_k with |h_j| ≈ 1e6, or a
gate near 0 fed by a pre-activation of size 2) is held to the rounding floor of that
computation — not to its own small size, which no iterate could meet (without the third
term lax.scan's own trajectory of a float32 diagonal GRU fails the test) — while one
large element never hides errors in small ones. Each iteration checks the cheaper
measure without the input term (never the looser); an iterate that stalls near tol is
judged by the full one (``newton.Iteration.verify``). A
stage stops when res(V) ≤ tol for the *returned* iterate (its residual comes from the
linearisation the next iteration needs anyway, so the check costs no extra pass): a
result flagged converged satisfies |v_{t,i} − f(v_{t−1}, x_t)_i| ≤ tol · s_{t,i} in
every element of every step, with J the stage's own. ``Info.residual`` is the same measure
with the proven structure's J (``linear.proven_residual``). A quasi stage's |diag J| scale is
never larger, so its own test is the stricter — too strict at float rounding, where the
off-diagonal inflow it ignores sets the floor of f's evaluation: such a stage also stops when
its residual stalls and is then judged by the proven measure (``newton.Iteration.verify``).
So ``converged=True`` always means the bound above with the proven structure's J.

**Tolerance.** ``tol`` defaults by dtype: 32·eps for float32 (≈ 3.8e-6), 1e-12
for float64 (≈ 4500·eps, above the rounding floor of a log-depth scan), 1e-2 for
16-bit floats. Users override with ``tol=``.

The stopping rules that use this measure — the step cap, divergence, non-finite iterates —
and the fallback chain live in the Newton driver, ``autopar.solvers.newton``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "default_tol",
    "default_max_iters",
    "shift",
    "residual",
    "step_residuals",
    "element_scale",
    "stage_residual",
    "input_inflow",
    "initial_guess",
]


def default_tol(dtype) -> float:
    """Scale-relative residual tolerance for the state dtype."""
    dtype = jnp.dtype(dtype)
    real = jnp.finfo(dtype).dtype
    if real == jnp.float64:
        return 1e-12
    if real.itemsize <= 2:
        return 1e-2
    return float(32 * jnp.finfo(real).eps)


def default_max_iters(T: int, cap: int) -> int:
    """DEER is exact after at most T iterations (each makes one more step exact); cap it."""
    return int(max(1, min(T + 1, cap)))


def options_tol(problem) -> float:
    tol = problem.options.get("tol")
    return float(tol) if tol is not None else default_tol(problem.dtype)


def options_max_iters(problem, cap: int) -> int:
    m = problem.options.get("max_iters")
    return int(m) if m is not None else default_max_iters(problem.length, cap)


def shift(v0, vs):
    """(v_0..v_{T-1}) from v0 and (v_1..v_T)."""
    return jnp.concatenate([v0[None], vs[:-1]], axis=0)


def element_scale(structure, a, prev, vs, inflow=None):
    """s_{t,i} = |v_{t,i}| + (|J_t|·|v_{t−1}|)_i (+ ``inflow``, ``input_inflow``) for every step (T, D), real."""
    bound = jax.vmap(structure.abs_matvec, axis_size=vs.shape[0])(a, jnp.abs(prev))
    s = jnp.abs(vs) + bound
    return s if inflow is None else s + inflow


def input_inflow(f, prev, xt):
    """|∂f/∂x_t · |x_t|| per step (T, D): the magnitude of what flows into each element from the
    input, a lower bound of |∂f/∂x|·|x| (one JVP in the direction |x|; signs may cancel, never
    inflate). Integer / bool input leaves carry no tangent."""

    def one(p, x):
        def direction(a):
            a = jnp.asarray(a)
            if jnp.issubdtype(a.dtype, jnp.inexact):
                return jnp.abs(a).astype(a.dtype)
            return np.zeros(a.shape, jax.dtypes.float0)

        _, t = jax.jvp(lambda x: f(p, x), (x,), (jax.tree_util.tree_map(direction, x),))
        return jnp.abs(t)

    return jax.vmap(one)(prev, xt)


def step_residuals(vs, fv, scale):
    """max_i |v_{t,i} − f(v_{t−1})_i| / scale_{t,i} for every step t: (T,) float32.

    NaN or inf in a step's ``vs`` or ``fv`` gives inf (never "converged"); an exact zero defect
    counts as zero whatever its scale; a finite defect on a zero scale gives the largest finite
    float32 (not converged, but not "non-finite" either: a zero first iterate is normal).
    """
    err = jnp.abs(vs - fv)
    finfo = jnp.finfo(err.dtype)
    ratio = jnp.where(err == 0, 0.0, err / jnp.maximum(scale.astype(err.dtype), finfo.tiny))
    rt = jnp.minimum(jnp.max(ratio, axis=1), finfo.max).astype(jnp.float32)
    rt = jnp.where(jnp.isinf(rt), jnp.finfo(jnp.float32).max, rt)  # a float64 ratio past float32's range
    return jnp.where(jnp.all(jnp.isfinite(err), axis=1), rt, jnp.inf)


def residual(vs, fv, scale):
    """res(V) = max_t ``step_residuals``, a float32 scalar (0 for T = 0)."""
    if vs.size == 0:
        return jnp.zeros((), jnp.float32)
    return jnp.max(step_residuals(vs, fv, scale))


def stage_residual(structure, a, prev, vs, fv, inflow=None):
    """``residual`` of ``vs`` with the per-element scale of the stage's Jacobian ``a``."""
    return residual(vs, fv, element_scale(structure, a, prev, vs, inflow))


def f_steps(f, prev, xt):
    """f(prev_t, xt_t) for every t (one vmapped evaluation)."""
    return jax.vmap(f)(prev, xt)


def initial_guess(problem) -> jax.Array:
    """The first iterate V⁰ (T, D) from ``options['init']``.

    * ``"zeros"`` (default): v_t = 0;
    * ``"h0"``: v_t = v_0 for all t;
    * ``"picard"``: one Picard (Jacobi) sweep from zeros, v_t = f(v⁰_{t−1}, x_t)
      (so v_1 is exact); ``picard_warmup=k`` does k sweeps (each makes one more step exact);
    * an array of shape (T, D) (the flat state trajectory, e.g. a previous solution).
    """
    T, D = problem.length, problem.v0.shape[0]
    init = problem.options.get("init")
    if init is None:
        init = "picard" if problem.options.get("picard_warmup") else "zeros"
    if isinstance(init, str):
        if init == "zeros":
            V = jnp.zeros((T, D), problem.dtype)
        elif init == "h0":
            V = jnp.broadcast_to(problem.v0, (T, D)).astype(problem.dtype)
        elif init == "picard":
            V = jnp.zeros((T, D), problem.dtype)
            sweeps = int(problem.options.get("picard_warmup") or 1)
            for _ in range(sweeps):
                V = f_steps(problem.f, shift(problem.v0, V), problem.xt)
        else:
            raise ValueError(
                f"option `init` must be 'zeros', 'h0', 'picard' or an array of shape (T, D) = ({T}, {D}); got {init!r}."
            )
        return V
    V = jnp.asarray(init)
    if V.shape != (T, D):
        raise ValueError(
            f"option `init` as an array must be the flat state trajectory of shape (T, D) = ({T}, {D}); "
            f"got shape {V.shape}. Ravel each state leaf per step and concatenate them in pytree order."
        )
    return V.astype(problem.dtype)


def finite(x):
    return jnp.all(jnp.isfinite(x))
