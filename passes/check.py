"""``check=True``: compare what the analysis proved with ``jax.jacfwd`` at random points.

A debugging aid for new primitives, user rules and user passes: on the first call of a
``parallelize(cell, check=True)`` function, J = ∂v_new/∂v is evaluated numerically at a few
random (h, x) and every proven fact is checked against it:

* ``sparsity`` (sparsity pass) — every nonzero of J lies in the reported pattern;
* ``structure`` (structure pass) — within the kind's pattern; identity means J = I and
  scalar means J = a·I (coefficients pass);
* ``linear`` (linearity pass) — for fixed x, J is the same at every h and f(h) = f(0) + J h.

A contradiction raises ``StructureCheckError`` naming the pass and the entries (leaf path
and index). Passing the check is evidence, not proof: the analysis itself never looks at
values.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from autopar import _compat
from autopar.errors import AutoparError

__all__ = ["StructureCheckError", "check_facts"]


class StructureCheckError(AutoparError):
    """The numerical Jacobian contradicts a fact the analysis reported."""


def _entry_name(rec: Any, k: int) -> str:
    for leaf in rec.layout.diff_leaves:
        if leaf.offset <= k < leaf.offset + leaf.size:
            idx = np.unravel_index(k - leaf.offset, leaf.shape) if leaf.shape else ()
            return f"{leaf.path}[{', '.join(map(str, idx))}]" if idx else leaf.path
    return f"v[{k}]"


def _describe(rec, entries, limit=6) -> str:
    parts = [f"∂{_entry_name(rec, i)}/∂{_entry_name(rec, j)}" for i, j in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(parts) + more


def _is_tracer(x) -> bool:
    return isinstance(x, _compat.Tracer)


def random_step_inputs(rec, rng, scale=1.0):
    """A random point (v, discrete state, x leaves) of ``rec.step``: normal floats (complex when
    the state is), small integers for integer leaves."""
    dtype = rec.layout.vec_dtype
    v = rng.normal(size=rec.size) * scale
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        v = v + 1j * rng.normal(size=rec.size) * scale
    v = jnp.asarray(v, dtype)
    disc = [jnp.asarray(rng.integers(-2, 3, size=l.shape), l.dtype) for l in rec.layout.discrete_leaves]
    xl = []
    for a in rec.x_avals:
        if jnp.issubdtype(a.dtype, jnp.inexact):
            xl.append(jnp.asarray(rng.normal(size=a.shape) * scale, a.dtype))
        else:
            xl.append(jnp.asarray(rng.integers(-2, 3, size=a.shape), a.dtype))
    return v, disc, xl


def primal_step(rec: Any, consts: Any, disc: Any, xl: Any):
    """``v -> rec.step(consts, v, disc, xl)[0]`` with custom_vjp calls inlined as their primals
    (``jax.jacfwd`` cannot enter a custom_vjp; the forward Jacobian is the primal's)."""
    return lambda u: rec.primal_step(list(consts), u, disc, xl)[0]


def check_facts(rec: Any, facts: Any, n_points: int = 3, seed: int = 0, scale: float = 1.0) -> bool:
    """Raise ``StructureCheckError`` on any contradiction; return False when the check could not
    run (closed-over values are tracers of an outer transformation), True when it passed."""
    import jax
    import jax.numpy as jnp

    if rec.size == 0:
        return True
    consts = rec.consts
    if any(_is_tracer(c) for c in consts):
        import warnings

        warnings.warn("autopar check=True skipped: the cell closes over traced values (call it outside "
                      "jit/grad once to run the check).", stacklevel=3)
        return False
    rng = np.random.default_rng(seed)
    dtype = rec.layout.vec_dtype
    S = np.asarray(facts["sparsity"], bool)
    st = facts["structure"]
    P = np.asarray(st.pattern(), bool)
    name = getattr(rec, "name", "cell")

    def sample():
        return random_step_inputs(rec, rng, scale)

    holo = np.issubdtype(np.dtype(dtype), np.complexfloating)
    with jax.ensure_compile_time_eval():
        for _ in range(n_points):
            v, disc, xl = sample()
            f = primal_step(rec, consts, disc, xl)
            J = np.asarray(jax.jacfwd(f, holomorphic=holo)(v))
            nz = np.abs(J) > 0
            bad = np.argwhere(nz & ~S).tolist()
            if bad:
                raise StructureCheckError(
                    f"check=True: the sparsity pass says J[i, j] = 0 for {len(bad)} entries of {name!r} where "
                    f"jax.jacfwd finds a nonzero: {_describe(rec, bad)}. A rule for one of the cell's primitives "
                    f"is unsound (conservative primitives: {facts.get('conservative', [])}); please report it."
                )
            bad = np.argwhere(nz & ~P).tolist()
            if bad:
                raise StructureCheckError(
                    f"check=True: the structure pass reports {st.describe()} for {name!r} but jax.jacfwd finds "
                    f"nonzeros outside it: {_describe(rec, bad)}."
                )
            tol = 1e-6 if np.finfo(np.dtype(dtype)).bits >= 64 else 1e-3
            if st.kind == "identity" and not np.allclose(J, np.eye(rec.size), atol=tol):
                raise StructureCheckError(f"check=True: the coefficients pass proved J = I for {name!r}, but "
                                          f"jax.jacfwd gives diagonal {np.diag(J)[:6]} (and off-diagonal entries).")
            if st.kind == "scalar" and not np.allclose(J, J[0, 0] * np.eye(rec.size), atol=tol * max(1, abs(J[0, 0]))):
                raise StructureCheckError(f"check=True: the coefficients pass proved J = a·I for {name!r}, but "
                                          f"jax.jacfwd gives diagonal {np.diag(J)[:6]}.")
            if facts.get("linear"):
                v2 = jnp.asarray(rng.normal(size=rec.size) * scale, dtype)
                J2 = np.asarray(jax.jacfwd(f, holomorphic=holo)(v2))
                f0 = np.asarray(f(jnp.zeros_like(v)))
                lhs = np.asarray(f(v2))
                if not (np.allclose(J, J2, atol=tol, rtol=tol) and np.allclose(lhs, f0 + J @ np.asarray(v2), atol=tol * 10, rtol=tol * 10)):
                    diff = np.argwhere(~np.isclose(J, J2, atol=tol, rtol=tol)).tolist()
                    raise StructureCheckError(
                        f"check=True: the linearity pass says {name!r} is affine in h, but for a fixed x its Jacobian "
                        f"changes with h (entries {_describe(rec, diff) if diff else 'none'}; or f(h) ≠ f(0) + J h)."
                    )
    return True
