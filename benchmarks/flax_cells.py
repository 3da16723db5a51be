"""The peers' benchmark cells, built the way their benchmarks build them (not a test module).

machine-discovery/deer ``experiments/01_speed_benchmark/seq1d.py`` and lindermanlab/elk's
speed benchmark both use ``flax.linen.GRUCell(features=nh)`` with flax's default initialisation
(``gru.init(key, carry, x0)``), a zero initial carry and standard-normal inputs of width nh.
The tanh RNN is ``flax.linen.SimpleCell(features=D)`` (tanh, orthogonal recurrent kernel,
flax's defaults), the same construction. float32 throughout.

``make(kind, nh, T, seed=0, batch=None)`` returns ``(cell, h0, xs, params, apply)`` where
``cell(h, x)`` closes over ``params`` (what autopar gets), ``apply(params, h, x)`` is the same
step with the parameters as an argument (what the peers' ``seq1d(func, y0, xs, params)``
gets), ``h0`` is ``(nh,)`` and ``xs`` is ``(T, nh)`` or ``(batch, T, nh)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

try:
    import flax.linen as nn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("benchmarks/flax_cells.py needs flax (`pip install flax`)") from e

__all__ = ["make", "KINDS"]

KINDS = ("gru", "tanh")


def make(kind: str, nh: int, T: int, *, seed: int = 0, batch: int | None = None, dtype=jnp.float32):
    if kind == "gru":
        mod = nn.GRUCell(features=nh, dtype=dtype, param_dtype=dtype)
    elif kind == "tanh":
        mod = nn.SimpleCell(features=nh, dtype=dtype, param_dtype=dtype)
    else:
        raise ValueError(f"unknown cell kind {kind!r}; known: {KINDS}")
    k_x, k_p = jax.random.split(jax.random.PRNGKey(seed))
    shape = (T, nh) if batch is None else (batch, T, nh)
    xs = jax.random.normal(k_x, shape, dtype)
    h0 = jnp.zeros((nh,), dtype)
    params = mod.init(k_p, h0, jnp.zeros((nh,), dtype))

    def apply(p, h, x):
        return mod.apply(p, h, x)[0]

    def cell(h, x):
        return apply(params, h, x)

    return cell, h0, xs, params, apply


def scan_states(apply, params, h0, xs):
    """The oracle: ``lax.scan`` of the step, states h_1..h_T (xs unbatched)."""
    return jax.lax.scan(lambda c, x: (apply(params, c, x),) * 2, h0, xs)[1]
