"""The oracle every test compares against: ``jax.lax.scan``."""

import jax
import jax.numpy as jnp
import numpy as np


def scan_states(cell, h0, xs, length=None, reverse=False):
    """States h_1..h_T of ``cell`` by lax.scan (stacked on axis 0)."""
    return jax.lax.scan(lambda h, x: (cell(h, x),) * 2, h0, xs, length=length, reverse=reverse)[1]


def tol_for(dtype) -> float:
    """A relative tolerance appropriate for results computed in ``dtype``."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.float64, jnp.complex128):
        return 1e-9
    if dtype == jnp.bfloat16 or dtype == jnp.float16:
        return 5e-2
    return 2e-4


def assert_trees_close(a, b, rtol=None, atol=None, err_msg=""):
    """Same pytree structure, shapes and dtypes; integers equal; floats close (compared in 64-bit,
    tolerance from the dtype unless given, absolute part scaled by the largest reference value);
    float0 leaves (cotangents of integer inputs) only checked for shape."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"pytree structures differ: {ta} vs {tb}. {err_msg}"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"shapes differ: {x.shape} vs {y.shape}. {err_msg}"
        assert x.dtype == y.dtype, f"dtypes differ: {x.dtype} vs {y.dtype}. {err_msg}"
        if y.dtype == jax.dtypes.float0:
            continue
        if x.dtype.kind in "biu":
            np.testing.assert_array_equal(x, y, err_msg=err_msg)
            continue
        r = tol_for(x.dtype) if rtol is None else rtol
        wide = np.complex128 if np.iscomplexobj(y) else np.float64
        x, y = x.astype(wide), y.astype(wide)
        scale = max(1.0, float(np.max(np.abs(y))) if y.size else 1.0)
        np.testing.assert_allclose(x, y, rtol=r, atol=(r * scale if atol is None else atol), err_msg=err_msg)
