"""Cells for the Newton-family tests and benchmarks (weights closed over, scaled to contract)."""

import jax
import jax.numpy as jnp
import numpy as np


def _w(key, shape, dtype, scale):
    return (scale * jax.random.normal(key, shape, jnp.float64) / np.sqrt(shape[0])).astype(dtype)


def make(name, D, dtype, seed=0):
    """(cell, h0, xs_fn(T)) for a named cell of state size ~D."""
    k = jax.random.split(jax.random.PRNGKey(seed), 12)
    X = 3

    def xs_fn(T, key=k[11]):
        return jax.random.normal(key, (T, X), jnp.float64).astype(dtype)

    if name == "gru":
        Wz, Wr, Wn = (_w(k[i], (D, D), dtype, 1.0) for i in range(3))
        Uz, Ur, Un = (_w(k[3 + i], (X, D), dtype, 1.0) for i in range(3))

        def cell(h, x):
            z = jax.nn.sigmoid(h @ Wz + x @ Uz)
            r = jax.nn.sigmoid(h @ Wr + x @ Ur)
            n = jnp.tanh((r * h) @ Wn + x @ Un)
            return (1 - z) * h + z * n

        return cell, jnp.zeros(D, dtype), xs_fn
    if name == "lstm":
        H = D // 2
        W = _w(k[0], (H, 4 * H), dtype, 1.0)
        U = _w(k[1], (X, 4 * H), dtype, 1.0)

        def cell(s, x):
            c, h = s
            g = h @ W + x @ U
            i, f, o, u = jnp.split(g, 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            return (c, jax.nn.sigmoid(o) * jnp.tanh(c))

        return cell, (jnp.zeros(H, dtype), jnp.zeros(H, dtype)), xs_fn
    if name == "diag_gru":  # ParaRNN-style: diagonal recurrent weights
        wz, wr, wn = (jax.random.uniform(k[i], (D,), jnp.float64, -1, 1).astype(dtype) for i in range(3))
        Uz, Ur, Un = (_w(k[3 + i], (X, D), dtype, 1.0) for i in range(3))

        def cell(h, x):
            z = jax.nn.sigmoid(wz * h + x @ Uz)
            r = jax.nn.sigmoid(wr * h + x @ Ur)
            n = jnp.tanh(wn * (r * h) + x @ Un)
            return (1 - z) * h + z * n

        return cell, jnp.zeros(D, dtype), xs_fn
    if name == "diag_lstm":  # ParaLSTM-style on a (c, h) pytree: 2x2 blocks (c_i, h_i)
        H = D // 2
        w = [jax.random.uniform(k[i], (H,), jnp.float64, -1, 1).astype(dtype) for i in range(4)]
        U = _w(k[5], (X, 4 * H), dtype, 1.0)

        def cell(s, x):
            c, h = s
            i, f, o, u = jnp.split(x @ U, 4)
            c = jax.nn.sigmoid(f + w[1] * h) * c + jax.nn.sigmoid(i + w[0] * h) * jnp.tanh(u + w[3] * h)
            return (c, jax.nn.sigmoid(o + w[2] * h) * jnp.tanh(c))

        return cell, (jnp.zeros(H, dtype), jnp.zeros(H, dtype)), xs_fn
    if name == "indrnn":
        w = jax.random.uniform(k[0], (D,), jnp.float64, -0.9, 0.9).astype(dtype)
        U = _w(k[1], (X, D), dtype, 1.0)

        def cell(h, x):
            return jax.nn.relu(w * h + x @ U)

        return cell, jnp.zeros(D, dtype), xs_fn
    if name == "multihead":
        nh, d = 3, max(D // 3, 1)
        W = _w(k[0], (nh, d, d), dtype, 0.9)
        U = _w(k[1], (X, nh, d), dtype, 1.0)

        def cell(h, x):
            return jnp.tanh(jnp.einsum("hd,hde->he", h, W) + jnp.einsum("x,xhe->he", x, U))

        return cell, jnp.zeros((nh, d), dtype), xs_fn
    if name == "node":  # Euler-discretised neural ODE, one hidden layer
        W1 = _w(k[0], (D, 2 * D), dtype, 1.0)
        W2 = _w(k[1], (2 * D, D), dtype, 1.0)
        U = _w(k[2], (X, 2 * D), dtype, 1.0)
        dt = 0.1

        def cell(h, x):
            return h + dt * (jnp.tanh(h @ W1 + x @ U) @ W2 - h)

        return cell, jnp.zeros(D, dtype), xs_fn
    if name == "pwl":  # piecewise-linear dense RNN
        W = _w(k[0], (D, D), dtype, 0.8)
        U = _w(k[1], (X, D), dtype, 1.0)

        def cell(h, x):
            return jax.nn.relu(h @ W + x @ U) - 0.1 * h

        return cell, jnp.zeros(D, dtype), xs_fn
    if name == "logistic":

        def cell(h, x):
            return 3.9 * h * (1 - h)

        return cell, jnp.asarray([0.3], dtype), lambda T: jnp.zeros((T, 1), dtype)
    if name == "lorenz96":

        def cell(h, x):
            d = (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + 8.0
            return h + 0.01 * d

        h0 = (8.0 + jnp.sin(jnp.arange(D, dtype=jnp.float64))).astype(dtype)
        return cell, h0, lambda T: jnp.zeros((T, 1), dtype)
    raise ValueError(name)


CELLS = ("gru", "lstm", "diag_gru", "diag_lstm", "indrnn", "multihead", "node", "pwl")
