"""dtype predicates that know JAX's extended float types, and VJPs w.r.t. the inexact leaves only.

``np.dtype(jnp.bfloat16).kind`` is ``'V'`` (an ml_dtypes type), so ``kind in "fc"``
misses bfloat16 and the float8 types; these predicates go through ``jnp.issubdtype``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_inexact", "is_complex", "is_float", "zeros_cotangent", "float_vjp", "expand_cotangents"]


def is_inexact(dtype: Any) -> bool:
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def is_complex(dtype: Any) -> bool:
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))


def is_float(dtype: Any) -> bool:
    """Real floating point (bfloat16 and float8 included)."""
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


def zeros_cotangent(x):
    """The zero cotangent of ``x``: zeros for an inexact array, float0 for an integer/bool one."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def float_vjp(fun, *primals):
    """VJP of ``fun`` w.r.t. the inexact leaves of ``primals`` only.

    Returns ``(out, vjp)`` where ``vjp(ct)`` gives the cotangents of the inexact leaves as a
    flat list (integer leaves have none); ``expand_cotangents`` rebuilds full cotangent pytrees.
    """
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    mask = [bool(jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact)) for l in leaves]

    def g(float_leaves):
        it = iter(float_leaves)
        full = [next(it) if m else l for l, m in zip(leaves, mask)]
        return fun(*jax.tree_util.tree_unflatten(treedef, full))

    return jax.vjp(g, [l for l, m in zip(leaves, mask) if m])


def expand_cotangents(float_cts, primals):
    """Full cotangent pytrees for ``primals`` from the inexact leaves' cotangents (float0 elsewhere)."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    it = iter(float_cts)
    full = [next(it) if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact) else zeros_cotangent(l) for l in leaves]
    return jax.tree_util.tree_unflatten(treedef, full)
