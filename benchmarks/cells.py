"""The benchmark cells: each ``make(D, seed) -> (cell, h0, x_fn, hand)``.

``x_fn(T)`` makes inputs of length T; ``hand`` is a hand-written associative scan
``hand(h0, xs) -> hs`` for the cells that have one (affine cells), else None.
All float32 / complex64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CELLS", "make_cell"]


def _rng(seed):
    return np.random.default_rng(seed)


def _xs(rng, T, n, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal((T, n)), dtype)


def diag_ssm(D, seed=0):
    """h ← a ⊙ h + B x: a diagonal linear state-space model."""
    rng = _rng(seed)
    a = jnp.asarray(rng.uniform(0.8, 0.999, D), jnp.float32)
    B = jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D), jnp.float32)

    def cell(h, x):
        return a * h + x @ B

    def hand(h0, xs):
        b = xs @ B
        A = jnp.broadcast_to(a, b.shape)
        b = b.at[0].add(a * h0)
        return jax.lax.associative_scan(lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1]), (A, b))[1]

    return cell, jnp.zeros(D, jnp.float32), lambda T: _xs(_rng(seed + 1), T, D), hand


def lru(D, seed=0):
    """LRU: h ← λ ⊙ h + B x with complex λ = exp(−ν + iθ) (complex diagonal)."""
    rng = _rng(seed)
    nu = rng.uniform(0.001, 0.1, D)
    theta = rng.uniform(0, np.pi, D)
    lam = jnp.asarray(np.exp(-nu + 1j * theta), jnp.complex64)
    B = jnp.asarray((rng.standard_normal((D, D)) + 1j * rng.standard_normal((D, D))) / np.sqrt(2 * D), jnp.complex64)

    def cell(h, x):
        return lam * h + x.astype(jnp.complex64) @ B

    def hand(h0, xs):
        b = xs.astype(jnp.complex64) @ B
        A = jnp.broadcast_to(lam, b.shape)
        b = b.at[0].add(lam * h0)
        return jax.lax.associative_scan(lambda e1, e2: (e2[0] * e1[0], e2[0] * e1[1] + e2[1]), (A, b))[1]

    return cell, jnp.zeros(D, jnp.complex64), lambda T: _xs(_rng(seed + 1), T, D), hand


def diag_gru(D, seed=0):
    """A GRU whose recurrent weights are diagonal: nonlinear, J diagonal."""
    rng = _rng(seed)
    u = jnp.asarray(rng.standard_normal((3, D)) * 0.5, jnp.float32)
    W = jnp.asarray(rng.standard_normal((D, 3 * D)) / np.sqrt(D), jnp.float32)

    def cell(h, x):
        g = x @ W
        z = jax.nn.sigmoid(u[0] * h + g[:D])
        r = jax.nn.sigmoid(u[1] * h + g[D:2 * D])
        n = jnp.tanh(g[2 * D:] + r * (u[2] * h))
        return (1 - z) * h + z * n

    return cell, jnp.zeros(D, jnp.float32), lambda T: _xs(_rng(seed + 1), T, D), None


def dense_gru(D, seed=0):
    """A standard GRU (dense recurrent weights)."""
    rng = _rng(seed)
    U = jnp.asarray(rng.standard_normal((D, 3 * D)) / np.sqrt(D), jnp.float32)
    W = jnp.asarray(rng.standard_normal((D, 3 * D)) / np.sqrt(D), jnp.float32)

    def cell(h, x):
        g, q = x @ W, h @ U
        z = jax.nn.sigmoid(g[:D] + q[:D])
        r = jax.nn.sigmoid(g[D:2 * D] + q[D:2 * D])
        n = jnp.tanh(g[2 * D:] + r * q[2 * D:])
        return (1 - z) * h + z * n

    return cell, jnp.zeros(D, jnp.float32), lambda T: _xs(_rng(seed + 1), T, D), None


def lstm(D, seed=0):
    """An LSTM with state (c, h)."""
    rng = _rng(seed)
    U = jnp.asarray(rng.standard_normal((D, 4 * D)) / np.sqrt(D), jnp.float32)
    W = jnp.asarray(rng.standard_normal((D, 4 * D)) / np.sqrt(D), jnp.float32)

    def cell(state, x):
        c, h = state
        g = x @ W + h @ U
        i, f, o = (jax.nn.sigmoid(g[k * D:(k + 1) * D]) for k in range(3))
        c = f * c + i * jnp.tanh(g[3 * D:])
        return c, o * jnp.tanh(c)

    h0 = (jnp.zeros(D, jnp.float32), jnp.zeros(D, jnp.float32))
    return cell, h0, lambda T: _xs(_rng(seed + 1), T, D), None


def deltanet(D, seed=0):
    """DeltaNet: matrix state S (d × d, d = √D) ← S (I − β k kᵀ) + β v kᵀ; affine in S."""
    d = max(int(round(np.sqrt(D))), 1)
    rng = _rng(seed)
    Wk = jnp.asarray(rng.standard_normal((d, d)) / np.sqrt(d), jnp.float32)
    Wv = jnp.asarray(rng.standard_normal((d, d)) / np.sqrt(d), jnp.float32)
    wb = jnp.asarray(rng.standard_normal(d) / np.sqrt(d), jnp.float32)

    def cell(S, x):
        k = x @ Wk
        k = k / (jnp.linalg.norm(k) + 1e-6)
        v = x @ Wv
        beta = jax.nn.sigmoid(x @ wb)
        return S - beta * jnp.outer(S @ k - v, k)

    return cell, jnp.zeros((d, d), jnp.float32), lambda T: _xs(_rng(seed + 1), T, d), None


def mamba_ssm(D, seed=0):
    """The README demo's Mamba-style selective SSM: state (16, 4), h ← exp(Δ·A) ⊙ h + Δ·B(x)·u(x).

    A multi-axis diagonal state with input-dependent decay; ``D`` is ignored (the demo's sizes)."""
    d, n, din = 16, 4, 8
    rng = _rng(seed)
    A = -jnp.exp(jnp.asarray(rng.standard_normal((d, n)), jnp.float32))
    Wd = jnp.asarray(rng.standard_normal((din, d)) / np.sqrt(din), jnp.float32)
    Wb = jnp.asarray(rng.standard_normal((din, n)) / np.sqrt(din), jnp.float32)
    Wx = jnp.asarray(rng.standard_normal((din, d)) / np.sqrt(din), jnp.float32)

    def cell(h, x):
        delta = jax.nn.softplus(x @ Wd)[:, None]
        return jnp.exp(delta * A) * h + delta * (x @ Wb)[None, :] * (x @ Wx)[:, None]

    return cell, jnp.zeros((d, n), jnp.float32), lambda T: _xs(_rng(seed + 1), T, din), None


def multi_axis(D, seed=0):
    """A diagonal linear decay on a (2, 8, 4) state (three axes), input broadcast along two of them."""
    rng = _rng(seed)
    a = jnp.asarray(rng.uniform(0.8, 0.999, (2, 8, 4)), jnp.float32)
    W = jnp.asarray(rng.standard_normal((8, 8)) / np.sqrt(8), jnp.float32)

    def cell(h, x):
        return a * h + (x @ W)[None, :, None]

    return cell, jnp.zeros((2, 8, 4), jnp.float32), lambda T: _xs(_rng(seed + 1), T, 8), None


def cheap_ops(D, seed=0):
    """Many cheap ops: a diagonal nonlinear cell with a chain of ~30 elementwise ops per step."""
    rng = _rng(seed)
    u = jnp.asarray(rng.uniform(0.3, 0.9, (4, D)), jnp.float32)

    def cell(h, x):
        y = h
        for k in range(4):
            y = u[k] * jnp.tanh(y + x) + 0.1 * jnp.sin(y) - 0.05 * y * y + 0.01 * jnp.cos(x * y)
        return 0.5 * h + 0.5 * y

    return cell, jnp.zeros(D, jnp.float32), lambda T: _xs(_rng(seed + 1), T, D), None


def few_expensive(D, seed=0):
    """Few expensive ops: h ← tanh(W h + U x) with a dense 64 × 64 W (D is ignored)."""
    n = 64
    rng = _rng(seed)
    W = jnp.asarray(rng.standard_normal((n, n)) * 0.5 / np.sqrt(n), jnp.float32)
    U = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)

    def cell(h, x):
        return jnp.tanh(h @ W + x @ U)

    return cell, jnp.zeros(n, jnp.float32), lambda T: _xs(_rng(seed + 1), T, n), None


def _sized(make, size):
    """``make`` at a fixed size whatever ``--D`` says (the stress cells: small and large D)."""
    def fixed(D, seed=0):
        return make(size, seed)

    fixed.__doc__ = f"{make.__doc__.splitlines()[0]} (fixed D = {size})"
    return fixed


CELLS = {
    "diag-ssm": diag_ssm,
    "lru": lru,
    "diag-gru": diag_gru,
    "dense-gru": dense_gru,
    "lstm": lstm,
    "deltanet": deltanet,
    # stress cells (issue 14): small and large D, matrix states of several sizes, multi-axis
    # states, many cheap ops vs few expensive ones. Their sizes are fixed.
    "diag-ssm-2": _sized(diag_ssm, 2),
    "diag-ssm-256": _sized(diag_ssm, 256),
    "dense-gru-4": _sized(dense_gru, 4),
    "dense-gru-64": _sized(dense_gru, 64),
    "deltanet-8": _sized(deltanet, 64),  # d_k = d_v = 8, the small DeltaNet
    "deltanet-16": _sized(deltanet, 256),  # 16 × 16 matrix state
    "mamba-ssm": mamba_ssm,
    "multi-axis": multi_axis,
    "cheap-ops": cheap_ops,
    "few-expensive": few_expensive,
}


def make_cell(name, D, seed=0):
    return CELLS[name](D, seed)
