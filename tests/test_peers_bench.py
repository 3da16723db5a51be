"""The peers benchmark's own pieces (fast; never needs the peers' checkouts)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks import flax_cells, peers  # noqa: E402


@pytest.mark.parametrize("kind", flax_cells.KINDS)
def test_flax_cells_cell_is_apply_with_params(kind):
    cell, h0, xs, params, apply = flax_cells.make(kind, 4, 7)
    assert xs.shape == (7, 4) and h0.shape == (4,)
    np.testing.assert_array_equal(cell(h0, xs[0]), apply(params, h0, xs[0]))
    hs = flax_cells.scan_states(apply, params, h0, xs)
    assert hs.shape == (7, 4) and bool(jnp.all(jnp.isfinite(hs)))


def test_flax_cells_batched_inputs():
    _, _, xs, _, _ = flax_cells.make("gru", 3, 5, batch=2)
    assert xs.shape == (2, 5, 3)


def test_jnp_proxy_clip_takes_both_spellings():
    j = peers._JnpProxy("p")
    x = jnp.arange(-3.0, 4.0)
    np.testing.assert_array_equal(j.clip(x, a_min=-1, a_max=2), jnp.clip(x, min=-1, max=2))
    np.testing.assert_array_equal(j.clip(x, min=-1, max=2), jnp.clip(x, min=-1, max=2))
    assert j.tanh is jnp.tanh


def test_while_loop_proxy_counts_only_when_asked():
    lax = peers._LaxProxy("l")

    def run():
        return jax.jit(lambda: lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 2.0, c[1] + 1),
                                              (jnp.float32(1.0), jnp.int32(0))))()

    peers._COUNTS.clear()
    out = jax.block_until_ready(run())
    assert int(out[1]) == 3 and peers._COUNTS == []
    peers._COUNTING["on"] = True
    try:
        jax.block_until_ready(run())
        jax.effects_barrier()
    finally:
        peers._COUNTING["on"] = False
    assert peers._COUNTS == [3]


def test_missing_checkout_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="checkout"):
        peers.load_md_deer(str(tmp_path / "nope"))
