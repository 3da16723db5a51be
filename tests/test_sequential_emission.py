"""The sequential loop's two emissions: lax.scan returning each new state, and the lagged write
(``solvers.sequential._lagged_scan``) the loop takes for transcendental, dot-free bodies on a CPU.
Both must equal ``lax.scan`` — values, gradients, every backward mode — whichever is chosen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import costs
from autopar.solvers import sequential as seq
from tests.oracle import assert_trees_close, scan_states


def _tanh_cell(D):
    u = jnp.linspace(0.3, 0.9, D, dtype=jnp.float32)
    return lambda h, x: 0.5 * h + 0.5 * u * jnp.tanh(h + x)


@pytest.mark.parametrize("T", [0, 1, 2, 7, 64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3])
def test_lagged_write_equals_the_scan(T, reverse, unroll):
    f = _tanh_cell(5)
    v0 = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    xt = jnp.asarray(np.random.default_rng(0).standard_normal((T, 5)), jnp.float32)
    plain = seq.sequential_trajectory(f, v0, xt, unroll=unroll, reverse=reverse, lagged=False)
    lagged = seq.sequential_trajectory(f, v0, xt, unroll=unroll, reverse=reverse, lagged=True)
    assert lagged.shape == plain.shape == (T, 5)
    np.testing.assert_array_equal(np.asarray(lagged), np.asarray(plain))


def test_lagged_write_carries_state_leaves():
    """With ``leaves`` the loop carries a pytree of leaves in their own shapes: every leaf's rows
    are written late and the last one after the loop."""
    A = jnp.linspace(0.2, 0.8, 6, dtype=jnp.float32).reshape(2, 3)

    def f(v, x):
        m, s = v[:6].reshape(2, 3), v[6:]
        return jnp.concatenate([(jnp.sin(A * m) + x[:6].reshape(2, 3)).reshape(6), jnp.tanh(s + x[6:])])

    split = lambda v: (v[:6].reshape(2, 3), v[6:])  # noqa: E731
    join = lambda parts: jnp.concatenate([parts[0].reshape(6), parts[1]])  # noqa: E731
    v0 = jnp.arange(8, dtype=jnp.float32) / 8
    xt = jnp.asarray(np.random.default_rng(1).standard_normal((9, 8)), jnp.float32)
    ref = scan_states(f, v0, xt)
    out = seq.sequential_trajectory(f, v0, xt, leaves=(split, join), lagged=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_which_bodies_take_the_lagged_write():
    """Real, dot-free bodies that evaluate a transcendental of the state (on a CPU); not an affine
    body, a matrix product, complex values, a transcendental of the input only, nor GPU constants."""
    cpu, gpu = costs.constants_for("cpu"), costs.constants_for("gpu")
    W = jnp.eye(8, dtype=jnp.float32) * 0.5
    a = jnp.full((8,), 0.9, jnp.float32)

    def pays(f, dtype=jnp.float32, K=cpu):
        closed = jax.make_jaxpr(f)(jnp.zeros(8, dtype), jnp.zeros(8, jnp.float32))
        return costs.lagged_write_pays(closed, 1, K)

    assert pays(_tanh_cell(8))
    assert pays(lambda h, x: jax.nn.sigmoid(h) * x)
    assert not pays(lambda h, x: a * h + x)
    assert not pays(lambda h, x: a * h + jnp.tanh(x))  # the transcendental reads no state
    assert not pays(lambda h, x: jnp.tanh(h @ W + x))
    assert not pays(lambda h, x: jnp.exp(h) * 0.5 + x, dtype=jnp.complex64)
    assert not pays(_tanh_cell(8), K=gpu)


@pytest.mark.parametrize("backward", ["auto", "sequential", "linear", "autodiff"])
def test_a_lagged_loop_solves_and_differentiates_like_lax_scan(backward, monkeypatch):
    """A pytree state with a transcendental, dot-free step (the lagged write on a CPU), forced
    sequential, odd T: states and gradients w.r.t. h0, xs and a closed-over parameter equal
    lax.scan's."""
    T = 37
    u = jnp.linspace(0.3, 0.9, 4, dtype=jnp.float32)

    def cell(h, x):
        return {"a": 0.5 * h["a"] + 0.5 * u * jnp.tanh(h["a"] + x), "b": jnp.sin(h["b"]) * 0.9 + x[:2]}

    h0 = {"a": jnp.full((4,), 0.1, jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((T, 4)), jnp.float32)
    used = []
    monkeypatch.setattr(seq, "_lagged_scan", lambda *a, _f=seq._lagged_scan: used.append(1) or _f(*a))
    fn = autopar.parallelize(cell, solver="sequential", backward=backward)
    assert_trees_close(fn(h0, xs), scan_states(cell, h0, xs))
    if jax.default_backend() == "cpu":
        assert used, "the lagged write was not taken"

    def loss(run, h0, xs):
        hs = run(h0, xs)
        return jnp.sum(hs["a"] ** 2) + jnp.sum(jnp.cos(hs["b"]))

    g = jax.grad(lambda h0, xs: loss(fn, h0, xs), argnums=(0, 1))(h0, xs)
    g_ref = jax.grad(lambda h0, xs: loss(lambda h, x: scan_states(cell, h, x), h0, xs), argnums=(0, 1))(h0, xs)
    assert_trees_close(g, g_ref)
    jf = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(h0, jnp.stack([xs, -xs]))
    assert_trees_close(jf, jax.vmap(lambda x: scan_states(cell, h0, x))(jnp.stack([xs, -xs])))
