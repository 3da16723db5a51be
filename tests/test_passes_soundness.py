"""Property: the reported sparsity (and structure) contains every nonzero of jax.jacfwd.

Random cells come from a small grammar of the primitives recurrent cells use: elementwise
chains, matmuls with h-independent (sparse) matrices, reshapes / transposes, rolls, slices
and concatenations, reductions, where, gathers / scatters with constant indices, cumsum,
sort, nested jit / custom_jvp / checkpoint, cond and a short scan. The analysis is never
allowed to claim a kind the numerical Jacobian contradicts; claimed affinity is checked too.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.passes_helpers import (analyse_cell, assert_affine, assert_affine_combination, assert_sound,
                                   assert_sparsity_covers)

D = 6
F64 = jnp.float64


@jax.custom_jvp
def _softclip(v):
    return jnp.tanh(v) * 2.0


_softclip.defjvp(lambda p, t: (_softclip(p[0]), 2.0 * (1 - jnp.tanh(p[0]) ** 2) * t[0]))


@jax.custom_jvp
def _ste(v):  # straight-through round: zero primal derivative, identity rule
    return jnp.round(v)


_ste.defjvp(lambda p, t: (_ste(p[0]), t[0]))


@jax.custom_jvp
def _mixtanh(v):  # a rule that mixes elements the primal does not
    return jnp.tanh(v)


_mixtanh.defjvp(lambda p, t: (jnp.tanh(p[0]), (1 - jnp.tanh(p[0]) ** 2) * t[0] + 0.3 * jnp.roll(t[0], 1)))


@jax.custom_vjp
def _clipg(v):  # gradient clipping: identity primal
    return v


_clipg.defvjp(lambda v: (v, None), lambda r, g: (jnp.clip(g, -1.0, 1.0),))

OPS = [
    "tanh", "sin", "mulx", "addx", "matmul", "reshape_t", "roll", "slice_cat", "sum_bcast", "where_x", "relu",
    "jit", "custom_jvp", "gather", "scatter", "cumsum", "sort", "cond", "scan", "addh", "square", "checkpoint",
    "ste", "mixtanh", "clipg", "bf16", "reduce_precision", "fori", "scalar_bcast",
]


def _apply(op, v, h, x, rng):
    if op == "tanh":
        return jnp.tanh(v)
    if op == "sin":
        return jnp.sin(v)
    if op == "square":
        return v * v
    if op == "mulx":
        return v * x
    if op == "addx":
        return v + x
    if op == "addh":
        return v + float(rng.normal()) * h
    if op == "matmul":
        M = rng.normal(size=(D, D)) * (rng.random((D, D)) < 0.3)
        return jnp.asarray(M) @ v
    if op == "reshape_t":
        return v.reshape(2, 3).T.reshape(D)
    if op == "roll":
        return jnp.roll(v, int(rng.integers(1, D)))
    if op == "slice_cat":
        k = int(rng.integers(1, D))
        return jnp.concatenate([v[k:] * 2.0, x[:k]])
    if op == "sum_bcast":
        return v + jnp.sum(v[:2])
    if op == "where_x":
        return jnp.where(x > 0, v, h)
    if op == "relu":
        return jax.nn.relu(v)
    if op == "jit":
        return jax.jit(lambda u: jnp.cos(u) * x)(v)
    if op == "custom_jvp":
        return _softclip(v)
    if op == "gather":
        perm = rng.permutation(D)
        return v[jnp.asarray(perm)]
    if op == "scatter":
        idx = rng.choice(D, size=2, replace=False)
        return v.at[jnp.asarray(idx)].add(v[:2] * x[:2])
    if op == "cumsum":
        return jnp.cumsum(v)
    if op == "sort":
        return jnp.sort(v.reshape(3, 2), axis=1).reshape(D)
    if op == "cond":
        return jax.lax.cond(x[0] > 0, lambda u: u * 0.5, lambda u: jnp.roll(u, 1), v)
    if op == "scan":
        c, _ = jax.lax.scan(lambda c, xi: (jnp.tanh(c * xi), None), v, jnp.stack([x, x + 1.0]))
        return c
    if op == "checkpoint":
        return jax.checkpoint(lambda u: jnp.exp(-u * u))(v)
    if op == "ste":
        return _ste(v)
    if op == "mixtanh":
        return _mixtanh(v)
    if op == "clipg":
        return _clipg(v)
    if op == "bf16":
        return v.astype(jnp.bfloat16).astype(v.dtype)
    if op == "reduce_precision":
        return jax.lax.reduce_precision(v, exponent_bits=8, mantissa_bits=7)
    if op == "fori":
        return jax.lax.fori_loop(0, 2, lambda i, c: jnp.roll(c, 1) * 0.5 + x, v)
    if op == "scalar_bcast":
        return jnp.max(jnp.sum(v) * x) * jnp.ones(D) + v
    raise AssertionError(op)


def make_cell(ops, seed):
    def cell(h, x):
        rng = np.random.default_rng(seed)  # same constants at every trace
        v = h
        for op in ops:
            v = _apply(op, v, h, x, rng)
        return v

    return cell


@settings(max_examples=20)
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_reported_sparsity_contains_numerical_jacobian(ops, seed):
    cell = make_cell(ops, seed)
    rec, facts = analyse_cell(cell, jnp.zeros(D, F64), jnp.ones((3, D), F64))
    assert_sparsity_covers(rec, facts, seed=seed)  # random, saturated, zero and 1e6 points
    assert_sound(rec, facts, n_points=2, seed=seed)  # (custom_vjp calls differentiate as their primal)
    if facts.linear:
        assert_affine(rec, seed=seed)
        assert_affine_combination(rec, seed=seed)
    if {"ste", "mixtanh", "bf16", "reduce_precision"} & set(ops):
        assert not facts.linear


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 2, 3]))
def test_permuted_block_cells(seed, block):
    """h' = tanh(B·h[perm]) with B block-diagonal: exact block structure through the gather."""
    rng = np.random.default_rng(seed)
    m = D // block
    B = np.zeros((D, D))
    for k in range(m):
        B[k * block:(k + 1) * block, k * block:(k + 1) * block] = rng.normal(size=(block, block))
    perm = rng.permutation(D)
    Bj, pj = jnp.asarray(B), jnp.asarray(perm)

    def cell(h, x):
        return jnp.tanh(jnp.einsum("ij,j->i", Bj, h)[pj] + x)

    rec, facts = analyse_cell(cell, jnp.zeros(D, F64), jnp.ones((2, D), F64))
    assert_sound(rec, facts, n_points=2, seed=seed)
