"""autopar.scan as lax.scan: ``unroll`` validated and passed to the sequential path; weakly typed
init promoted to the body's carry dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar


def _f(c, x):
    return jnp.tanh(0.5 * c + x), c * x


XS = jnp.linspace(-1.0, 1.0, 6)


@pytest.mark.parametrize("unroll", [-1, -3])
def test_negative_unroll_rejected_like_lax(unroll):
    with pytest.raises(ValueError, match="unroll"):
        jax.lax.scan(_f, 0.0, XS, unroll=unroll)
    with pytest.raises(ValueError, match="unroll"):
        autopar.scan(_f, 0.0, XS, unroll=unroll)


def test_traced_unroll_rejected_like_lax():
    for scan in (jax.lax.scan, autopar.scan):
        with pytest.raises(jax.errors.ConcretizationTypeError):
            jax.jit(lambda u: scan(_f, 0.0, XS, unroll=u))(2)


@pytest.mark.parametrize("unroll", [0, 1, 2, True, False])
def test_unroll_values_match_and_reach_the_sequential_scan(unroll):
    want = jax.lax.scan(_f, 0.0, XS, unroll=unroll)
    got = autopar.scan(_f, 0.0, XS, unroll=unroll, solver="sequential")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    if unroll in (2,):
        jaxpr = jax.make_jaxpr(lambda: autopar.scan(_f, 0.0, XS, unroll=unroll, solver="sequential"))()
        assert "unroll=2" in str(jaxpr)


@pytest.mark.parametrize("init", [0, 0.0, 1 + 0j])
def test_weak_typed_init_promoted(init):
    xs = XS.astype(jnp.complex128) if isinstance(init, complex) else XS
    want = jax.lax.scan(lambda c, x: (c + x, c * x), init, xs)
    got = autopar.scan(lambda c, x: (c + x, c * x), init, xs)
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])
