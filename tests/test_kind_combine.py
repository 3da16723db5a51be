"""The dense / block combine (``kinds.base.matmul``): the unrolled short contractions against a
float64 reference, and the parallel solvers that use them against lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.kinds.base import UNROLL_CONTRACTION, matmul

from .oracle import assert_trees_close, scan_states


@pytest.mark.parametrize("k", [1, 2, 4, 5, 7, 8, UNROLL_CONTRACTION, UNROLL_CONTRACTION + 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_matmul_matches_reference(k, dtype):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((3, 2, 5, k)) * (1e3 if k % 2 else 1e-3)  # mixed scales
    b = rng.standard_normal((3, 2, k, 6))
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal(a.shape)
        b = b - 1j * rng.standard_normal(b.shape)
    ref = np.matmul(a, b)
    got = np.asarray(jax.jit(matmul)(jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
    assert got.shape == ref.shape and got.dtype == np.dtype(dtype)
    eps = np.finfo(dtype).eps
    scale = np.abs(a)[..., :, :, None] * np.abs(b)[..., None, :, :]  # |a||b| bounds the rounding
    assert np.all(np.abs(got - ref) <= 4 * k * eps * scale.sum(-2) + 1e-300)


def _dense_cell(W, U):
    def cell(h, x):
        return W @ h + x @ U
    return cell


@pytest.mark.parametrize("D", [4, 7])
@pytest.mark.parametrize("T", [6, 257])
def test_dense_linear_and_deer_match_scan(D, T):
    rng = np.random.default_rng(D * 1000 + T)
    W = jnp.asarray(rng.standard_normal((D, D)) * 0.5 / np.sqrt(D), jnp.float32)
    U = jnp.asarray(rng.standard_normal((3, D)), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, 3)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal(D), jnp.float32)
    cell = _dense_cell(W, U)
    ref = scan_states(cell, h0, xs)
    p = autopar.parallelize(cell, solver="linear")
    assert p.explain(h0, xs).structure.kind == "dense"
    assert_trees_close(p(h0, xs), ref, rtol=1e-4, atol=1e-5)

    def nl(h, x):
        return jnp.tanh(W @ h + x @ U)

    assert_trees_close(autopar.parallelize(nl, solver="deer")(h0, xs), scan_states(nl, h0, xs),
                       rtol=1e-4, atol=1e-5)
    # the linear adjoint reverse-scans the transposed dense factors
    g = jax.grad(lambda h0, xs: jnp.sum(autopar.parallelize(nl, backward="linear")(h0, xs) ** 2), (0, 1))(h0, xs)
    g_ref = jax.grad(lambda h0, xs: jnp.sum(scan_states(nl, h0, xs) ** 2), (0, 1))(h0, xs)
    assert_trees_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_block_diagonal_blocks_of_four_match_scan():
    rng = np.random.default_rng(3)
    B = jnp.asarray(rng.standard_normal((3, 4, 4)) * 0.4, jnp.float32)  # three 4×4 blocks, D = 12

    def cell(h, x):
        return jnp.tanh(jnp.einsum("kij,kj->ki", B, h.reshape(3, 4)).reshape(12) + x)

    h0, xs = jnp.zeros(12, jnp.float32), jnp.asarray(rng.standard_normal((129, 12)), jnp.float32)
    p = autopar.parallelize(cell, solver="deer")
    assert p.explain(h0, xs).structure.kind == "block-diagonal"
    assert_trees_close(p(h0, xs), scan_states(cell, h0, xs), rtol=1e-4, atol=1e-5)
