"""Per-primitive sparsity rules: exact where indices/masks are known, sound everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.passes_helpers import analyse_cell, assert_sound

F64 = jnp.float64


def _run(cell, D=6, xshape=None, h0=None):
    h0 = jnp.zeros(D, F64) if h0 is None else h0
    xs = jnp.ones((3,) + (xshape or (D,)), F64)
    rec, facts = analyse_cell(cell, h0, xs)
    assert_sound(rec, facts)
    return facts


def _pattern(facts):
    return np.asarray(facts.sparsity, int)


PERM = np.array([1, 0, 3, 2, 5, 4])


def test_gather_with_literal_permutation_is_monomial():
    f = _run(lambda h, x: h[jnp.array([1, 0, 3, 2, 5, 4])] * x)
    np.testing.assert_array_equal(_pattern(f), np.eye(6, dtype=int)[PERM])
    # a permutation is monomial (O(D) per combine), tighter than its 2×2 blocks
    assert f.structure.kind == "monomial" and f.structure.perm.tolist() == PERM.tolist()
    assert f.linear and f.conservative == []


def test_gather_with_closed_over_numpy_permutation():
    perm = np.array([1, 0, 3, 2, 5, 4])
    f = _run(lambda h, x: jnp.tanh(h[perm] + x))
    np.testing.assert_array_equal(_pattern(f), np.eye(6, dtype=int)[PERM])
    assert f.const_fingerprint  # the analysis relied on the constant's value


def test_gather_negative_and_2d_indices():
    f = _run(lambda h, x: h.reshape(2, 3)[:, jnp.array([-1, 0, 1])].reshape(6) * x)
    expect = np.zeros((6, 6), int)
    for r, c in enumerate([2, 0, 1, 5, 3, 4]):
        expect[r, c] = 1
    np.testing.assert_array_equal(_pattern(f), expect)


def test_gather_with_input_dependent_indices_is_conservative():
    def cell(h, x):
        i = jnp.argmax(x)
        return h * 0.5 + h[i]

    f = _run(cell)
    assert f.sparsity.all()


def test_take_along_axis_and_dynamic_index():
    f = _run(lambda h, x: jax.lax.dynamic_slice(h, (2,), (2,)).sum() + h * x)
    S = np.eye(6, dtype=bool)
    S[:, 2:4] = True
    np.testing.assert_array_equal(f.sparsity, S)


def test_dynamic_slice_unknown_start_unions_the_axis():
    f = _run(lambda h, x: jnp.tile(jax.lax.dynamic_slice(h, (jnp.argmax(x),), (3,)), 2))
    assert f.sparsity.all()


def test_dynamic_update_slice_constant_start_replaces():
    f = _run(lambda h, x: jax.lax.dynamic_update_slice(h * x, h[:2] * 2.0, (3,)))
    S = np.eye(6, dtype=bool)
    S[3, 3] = S[4, 4] = False
    S[3, 0] = S[4, 1] = True
    np.testing.assert_array_equal(f.sparsity, S)


@pytest.mark.parametrize("op", ["set", "add", "mul", "max"])
def test_scatter_with_constant_indices(op):
    def cell(h, x):
        upd = h[jnp.array([0, 1])] * x[:2]
        kw = {"unique_indices": True} if op == "mul" else {}
        return getattr(h.at[jnp.array([4, 5])], op)(upd, **kw)

    f = _run(cell)
    S = np.eye(6, dtype=bool)
    S[4, 0] = S[5, 1] = True
    if op == "set":
        S[4, 4] = S[5, 5] = False
    np.testing.assert_array_equal(f.sparsity, S)


def test_scatter_out_of_bounds_is_dropped():
    f = _run(lambda h, x: h.at[jnp.array([7])].add(h[0], mode="drop"))
    np.testing.assert_array_equal(f.sparsity, np.eye(6, dtype=bool))


def test_select_with_constant_mask_and_data_dependent_predicate():
    mask = jnp.array([True, False] * 3)
    f = _run(lambda h, x: jnp.where(mask, h, x))
    np.testing.assert_array_equal(f.sparsity, np.diag(np.array([1, 0] * 3, bool)))
    f = _run(lambda h, x: jnp.where(h > x, h, 2 * h))  # predicate carries no derivative
    np.testing.assert_array_equal(f.sparsity, np.eye(6, dtype=bool))
    assert f.degree == "piecewise-linear"


def test_clamp_sort_argmax_iota():
    f = _run(lambda h, x: jnp.clip(h, -1.0, x))
    assert f.structure.kind == "diagonal" and f.degree == "piecewise-linear"
    f = _run(lambda h, x: jnp.sort(h.reshape(2, 3), axis=1).reshape(6) + x)
    np.testing.assert_array_equal(f.sparsity, np.kron(np.eye(2), np.ones((3, 3))).astype(bool))
    f = _run(lambda h, x: h * x + jnp.argmax(h).astype(F64) + jnp.arange(6.0))
    np.testing.assert_array_equal(f.sparsity, np.eye(6, dtype=bool))


@pytest.mark.parametrize("fn", [jnp.cumsum, jnp.cumprod, jax.lax.cummax, lambda v: jnp.cumsum(v[::-1])[::-1]])
def test_cumulative_ops_are_triangular(fn):
    f = _run(lambda h, x: fn(h) * x)
    S = f.sparsity
    assert np.array_equal(S, np.tril(np.ones((6, 6), bool))) or np.array_equal(S, np.triu(np.ones((6, 6), bool)))


def test_split_and_concatenate():
    def cell(h, x):
        a, b, c = jnp.split(h, 3)
        return jnp.concatenate([c, a * x[:2], b])

    f = _run(cell)
    np.testing.assert_array_equal(f.sparsity, np.roll(np.eye(6, dtype=bool), 2, axis=0))


def test_dot_with_known_identity_matrix_is_exact():
    f = _run(lambda h, x: jnp.eye(6) @ jnp.tanh(h) + x)
    assert f.structure.kind == "diagonal"
    f = _run(lambda h, x: jnp.tril(jnp.ones((6, 6))) @ h + x)
    np.testing.assert_array_equal(f.sparsity, np.tril(np.ones((6, 6), bool)))


def test_nested_jit_custom_jvp_custom_vjp_remat():
    @jax.custom_jvp
    def sq(v):
        return v * v

    sq.defjvp(lambda p, t: (sq(p[0]), 2 * p[0] * t[0]))

    @jax.custom_vjp
    def cube(v):
        return v ** 3

    cube.defvjp(lambda v: (cube(v), v), lambda r, g: (3 * r * r * g,))

    f = _run(lambda h, x: jax.jit(lambda u: jnp.tanh(u) + x)(sq(h)) + jax.checkpoint(jnp.sin)(h))
    assert f.structure.kind == "diagonal" and f.conservative == []
    rec, facts = analyse_cell(lambda h, x: cube(h) * x, jnp.zeros(6, F64), jnp.ones((3, 6), F64))
    assert facts.structure.kind == "diagonal" and facts.conservative == []  # (jacfwd cannot run on custom_vjp)


def test_cond_is_union_of_branches():
    def cell(h, x):
        return jax.lax.cond(x[0] > 0, lambda u: u * x, lambda u: jnp.roll(u, 1), h)

    f = _run(cell)
    np.testing.assert_array_equal(f.sparsity, np.eye(6, dtype=bool) | np.roll(np.eye(6, dtype=bool), 1, axis=0))
    assert f.degree == "affine"  # the branch is chosen by x: affine in h
    f = _run(lambda h, x: jax.lax.cond(h[0] > 0, lambda u: u * x, lambda u: -u, h))
    assert f.degree == "piecewise-linear" and f.structure.kind == "diagonal"


def test_scan_inside_cell_reaches_fixpoint():
    def cell(h, x):
        def body(c, xi):
            return jnp.roll(c, 1) * xi, c[0]

        c, ys = jax.lax.scan(body, h, jnp.ones((3, 6)) * x[None])
        return c + ys.sum()

    f = _run(cell)
    # 3 rolls; but the fixpoint over-approximates any trip count: every element reaches every other
    assert f.sparsity.all()


def test_while_fixpoint_over_carry_pairs():
    def cell(h, x):
        def body(c):
            i, a, b = c
            return i + 1, a * x, b + a[::-1] * 0.1

        _, a, b = jax.lax.while_loop(lambda c: c[0] < 3, body, (0, h, h))
        return b

    f = _run(cell)
    np.testing.assert_array_equal(f.sparsity, np.eye(6, dtype=bool) | np.eye(6, dtype=bool)[::-1])


def test_unknown_primitive_is_dense_and_named():
    def cell(h, x):
        y = jax.lax.reduce_window(h, 0.0, jax.lax.add, (2,), (1,), "SAME")
        return y * x + h

    f = _run(cell)
    assert "reduce_window_sum" in f.conservative or "reduce_window" in " ".join(f.conservative)
    assert f.sparsity.all()


def test_big_matrix_state_is_cheap():
    """A 64×64 matrix state (D = 4096) with a row-wise recurrence: packed bitsets keep it small."""
    import time

    A = jnp.asarray(np.random.default_rng(0).normal(size=(64,)), jnp.float32)

    def cell(S, x):
        return jnp.tanh(S * A[None, :] + x)  # elementwise on the matrix state

    h0 = jnp.zeros((64, 64), jnp.float32)
    xs = jnp.ones((2, 64, 64), jnp.float32)
    from autopar.passes import analyse
    from autopar.trace import trace_cell

    rec = trace_cell(cell, h0, xs)
    t = time.process_time()  # CPU time: a loaded machine must not fail it
    facts = analyse(rec)
    dt = time.process_time() - t
    assert facts.structure.kind == "diagonal"
    assert facts.colors["n"] == 1
    assert dt < 20.0, dt  # generous: it catches a blow-up (D = 4096), not a slow machine


def test_block_rows_of_matrix_state():
    """S_new = S @ M (M h-independent): rows of S do not mix -> blocks of size 8 for an 8×8 state."""
    M = jnp.asarray(np.random.default_rng(1).normal(size=(8, 8)))

    def cell(S, x):
        return S @ M + x

    rec, f = analyse_cell(cell, jnp.zeros((8, 8), F64), jnp.ones((2, 8, 8), F64))
    assert_sound(rec, f)
    np.testing.assert_array_equal(f.sparsity, np.kron(np.eye(8, dtype=bool), np.ones((8, 8), bool)))
    # the matrix-state pass refines the 8 equal blocks into one shared 8×8 factor
    assert f.structure.kind in ("block-diagonal", "kronecker(dense)")
    if f.structure.kind == "block-diagonal":
        assert f.structure.block_size == 8 and f.structure.n_blocks == 8
    assert f.linear
