"""dtype predicates that know JAX's extended float types.

``np.dtype(jnp.bfloat16).kind`` is ``'V'`` (an ml_dtypes type), so ``kind in "fc"``
misses bfloat16 and the float8 types; these predicates go through ``jnp.issubdtype``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["is_inexact", "is_complex", "is_float"]


def is_inexact(dtype: Any) -> bool:
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def is_complex(dtype: Any) -> bool:
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))


def is_float(dtype: Any) -> bool:
    """Real floating point (bfloat16 and float8 included)."""
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))
