"""autopar.hoist: the sequential loop computes the state-independent part of a step for all T
steps first. The split must give lax.scan's values (odd lengths, pytrees, dtypes, complex), keep
custom rules, leave effects and large residuals alone, and compose with jit / vmap / grad / jvp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import hoist
from autopar.solvers.sequential import sequential_trajectory

from .oracle import assert_trees_close, scan_states

rng = np.random.default_rng(0)


def _mamba(dtype):
    """Input-dependent decay and drive (softplus is a custom_jvp): three x-only matvecs."""
    d, n, din = 16, 4, 8
    A = -jnp.exp(jnp.asarray(rng.standard_normal((d, n)), dtype))
    Wd, Wb, Wx = (jnp.asarray(rng.standard_normal((din, k)) / np.sqrt(din), dtype) for k in (d, n, d))

    def cell(h, x):
        delta = jax.nn.softplus(x @ Wd)[:, None]
        return jnp.exp(delta * A) * h + delta * (x @ Wb)[None, :] * (x @ Wx)[:, None]

    return cell, jnp.zeros((d, n), dtype), din


def _gru_pytree(dtype):
    """A pytree state; the input projection is x-only, and one leaf is reset from x alone."""
    D, din = 12, 20
    Wx = jnp.asarray(rng.standard_normal((din, 3 * D)) / np.sqrt(din), dtype)
    U = jnp.asarray(rng.standard_normal((D, 3 * D)) / np.sqrt(D), dtype)

    def cell(h, x):
        g = x @ Wx
        q = h["h"] @ U
        z = jax.nn.sigmoid(g[:D] + q[:D])
        r = jax.nn.sigmoid(g[D:2 * D] + q[D:2 * D])
        c = jnp.tanh(g[2 * D:] + r * q[2 * D:])
        return {"h": (1 - z) * h["h"] + z * c, "last": jnp.tanh(x[:4] @ Wx[:4, :4])}

    return cell, {"h": jnp.zeros(D, dtype), "last": jnp.zeros(4, dtype)}, din


def _lru():
    D, din = 10, 16
    lam = jnp.exp(jnp.asarray(-rng.uniform(0.01, 0.1, D) + 1j * rng.uniform(0, np.pi, D), jnp.complex64))
    B = jnp.asarray(rng.standard_normal((din, D)) + 1j * rng.standard_normal((din, D)), jnp.complex64) / 4

    def cell(h, x):
        return lam * h + x.astype(jnp.complex64) @ B

    return cell, jnp.zeros(D, jnp.complex64), din


CELLS = {"mamba32": lambda: _mamba(jnp.float32), "mamba64": lambda: _mamba(jnp.float64),
         "gru-pytree": lambda: _gru_pytree(jnp.float32), "lru-complex": _lru}


def _xs(T, din, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal((T, din)), dtype)


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("T", [1, 7, 130])
def test_hoisted_sequential_equals_lax_scan(name, T):
    cell, h0, din = CELLS[name]()
    dtype = jax.tree.leaves(h0)[0].real.dtype
    xs = _xs(T, din, dtype)
    assert hoist.hoisted(cell, h0, xs) is not None, "the cell's x-only matvecs should be moved out"
    got = sequential_trajectory(cell, h0, xs)
    assert_trees_close(got, scan_states(cell, h0, xs))
    fn = jax.jit(autopar.parallelize(cell, solver="sequential"))
    assert_trees_close(fn(h0, xs), scan_states(cell, h0, xs))


def test_split_keeps_custom_rules_whole():
    """A custom_jvp call that reads the state stays one equation in the loop, with its rule."""

    @jax.custom_jvp
    def clip_grad(h):
        return jnp.tanh(h)

    @clip_grad.defjvp
    def _(primals, tangents):
        (h,), (t,) = primals, tangents
        return jnp.tanh(h), 0.5 * t  # deliberately not the true derivative

    W = jnp.asarray(rng.standard_normal((8, 6)) / 3, jnp.float32)

    def cell(h, x):
        return clip_grad(h) + x @ W

    h0, xs = jnp.zeros(6, jnp.float32), _xs(9, 8)
    assert hoist.hoisted(cell, h0, xs) is not None

    def loss(traj, h0, xs):
        return jnp.sum(traj(h0, xs) ** 2)

    fn = autopar.parallelize(cell, solver="sequential", backward="autodiff")
    want = jax.grad(loss, argnums=(1, 2))(lambda h, x: scan_states(cell, h, x), h0, xs)
    got = jax.grad(loss, argnums=(1, 2))(fn, h0, xs)
    assert_trees_close(got, want)


def test_effects_and_elementwise_inputs_are_not_hoisted():
    W = jnp.ones((4, 4), jnp.float32)

    def printing(h, x):
        jax.debug.print("{}", x[0])
        return jnp.tanh(h + x @ W)

    def elementwise(h, x):  # nothing worth a vectorised pass: it all fuses into the loop body
        return jnp.tanh(h) * jax.nn.sigmoid(x)

    h0, xs = jnp.zeros(4, jnp.float32), _xs(5, 4)
    assert hoist.hoisted(printing, h0, xs) is None
    assert hoist.hoisted(elementwise, h0, xs) is None


def test_large_residuals_stay_in_the_loop():
    """An x-dependent dense transition (D² floats a step) is not stored for all T."""
    D, din = 24, 4
    W = jnp.asarray(rng.standard_normal((din, D * D)) / 10, jnp.float32)

    def cell(h, x):
        return jnp.tanh((x @ W).reshape(D, D) @ h)

    assert hoist.hoisted(cell, jnp.zeros(D, jnp.float32), _xs(5, din)) is None


def test_transforms_through_the_hoisted_loop():
    cell, h0, din = _mamba(jnp.float32)
    xs = _xs(33, din)
    fn = autopar.parallelize(cell, solver="sequential")
    ref = lambda h, x: scan_states(cell, h, x)  # noqa: E731
    batch = jnp.stack([xs, 0.5 * xs])
    assert_trees_close(jax.vmap(fn, (None, 0))(h0, batch), jax.vmap(ref, (None, 0))(h0, batch))
    t = (jnp.ones_like(h0), jnp.ones_like(xs))
    assert_trees_close(jax.jvp(fn, (h0 + 0.1, xs), t), jax.jvp(ref, (h0 + 0.1, xs), t), rtol=1e-3)
    loss = lambda g: lambda h, x: jnp.sum(jnp.sin(g(h, x)))  # noqa: E731
    for backward in ("sequential", "linear", "autodiff"):
        f = autopar.parallelize(cell, solver="sequential", backward=backward)
        assert_trees_close(jax.grad(loss(f), (0, 1))(h0 + 0.1, xs), jax.grad(loss(ref), (0, 1))(h0 + 0.1, xs),
                           rtol=1e-3, err_msg=backward)


def test_planner_prices_the_hoisted_loop():
    """The cost pass reports the split; the sequential price drops by the moved kernels."""
    cell, h0, din = _mamba(jnp.float32)
    report = autopar.parallelize(cell).explain(h0, _xs(4096, din))
    split = report.facts["hoisted"]
    assert split is not None and sum(split.outer_ops) == 3 and sum(split.inner_ops) == 0
    elementwise = autopar.parallelize(lambda h, x: jnp.tanh(h) * x).explain(jnp.zeros(4), _xs(64, 4))
    assert elementwise.facts["hoisted"] is None


def _small_deltanet():
    """d = 4 DeltaNet: its x-only projections are 4 × 4 matvecs (under step_ops' kernel size)."""
    d = 4
    Wk, Wv = (jnp.asarray(rng.standard_normal((d, d)) / 2, jnp.float32) for _ in range(2))
    wb = jnp.asarray(rng.standard_normal(d) / 2, jnp.float32)

    def cell(S, x):
        k = x @ Wk
        k = k / (jnp.linalg.norm(k) + 1e-6)
        beta = jax.nn.sigmoid(x @ wb)
        return S - beta * jnp.outer(S @ k - x @ Wv, k)

    return cell, jnp.zeros((d, d), jnp.float32), d


def test_small_matvecs_move_out_only_past_the_thunk_limit():
    """Small matvecs are moved out when the whole step would compile past THUNK_LIMIT thunks
    (the small DeltaNet, forward and its adjoint's reverse loop); a D = 2 SSM's one 2 × 2 matvec
    stays in the loop. Values and gradients stay lax.scan's."""
    cell, S0, d = _small_deltanet()
    xs = _xs(37, d)
    report = autopar.parallelize(cell, solver="sequential").explain(S0, xs)
    split = report.facts["hoisted"]
    assert split is not None and sum(split.outer_ops) == 0 and split.outer_thunk_ops >= 1
    assert split.loop_thunks() > hoist.THUNK_LIMIT
    assert report.facts["vjp_hoisted_flops"] > 0  # the reverse loop is split too
    fn = autopar.parallelize(cell, solver="sequential", backward="sequential")
    assert_trees_close(fn(S0, xs), scan_states(cell, S0, xs))
    loss = lambda g: lambda S, x: jnp.sum(jnp.sin(g(S, x)))  # noqa: E731
    assert_trees_close(jax.grad(loss(fn), (0, 1))(S0 + 0.1, xs),
                       jax.grad(loss(lambda S, x: scan_states(cell, S, x)), (0, 1))(S0 + 0.1, xs), rtol=1e-4)

    W = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)
    ssm2 = lambda h, x: 0.9 * h + x @ W  # noqa: E731
    assert hoist.hoisted(ssm2, jnp.zeros(2, jnp.float32), _xs(9, 2)) is None
