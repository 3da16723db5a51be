"""Bad input gets an error before any compute, naming the argument, what was received and what to do."""

import jax
import jax.numpy as jnp
import pytest

import autopar
from autopar.solvers import SOLVER_NAMES, solver_names


def test_not_callable():
    with pytest.raises(TypeError, match="`cell` must be callable"):
        autopar.parallelize(3)


def test_unknown_solver_lists_available():
    with pytest.raises(ValueError, match="unknown solver 'fast'.*Available: auto, "):
        autopar.parallelize(lambda h, x: h, solver="fast")


@pytest.mark.parametrize("name", [n for n in SOLVER_NAMES if n != "auto" and n not in solver_names()] or ["(none pending)"])
def test_pending_solver_names_are_explained(name):
    if name == "(none pending)":
        pytest.skip("every documented solver is available")
    with pytest.raises(ValueError, match="not available in this version"):
        autopar.parallelize(lambda h, x: h, solver=name)


def test_unknown_option():
    with pytest.raises(TypeError, match="unknown option"):
        autopar.parallelize(lambda h, x: h, tolerance=1e-3)


def test_output_structure_mismatch():
    fn = autopar.parallelize(lambda h, x: (h, h))
    with pytest.raises(TypeError, match="same pytree structure as `h0`"):
        fn(jnp.zeros(2), jnp.zeros((3, 2)))


def test_output_shape_mismatch_names_leaf():
    fn = autopar.parallelize(lambda h, x: {"a": h["a"], "b": jnp.zeros(3)})
    with pytest.raises(TypeError, match=r"h0\[.b.\].*float\d+\[3\].*float\d+\[2\]"):
        fn({"a": jnp.zeros(2), "b": jnp.zeros(2)}, jnp.zeros((3, 2)))


def test_output_dtype_mismatch():
    fn = autopar.parallelize(lambda h, x: h.astype(jnp.float16))
    with pytest.raises(TypeError, match="keep each state leaf's shape and dtype"):
        fn(jnp.zeros(2, jnp.float32), jnp.zeros((3, 2)))


def test_xs_lengths_differ():
    fn = autopar.parallelize(lambda h, x: h)
    with pytest.raises(ValueError, match=r"same leading \(time\) length.*xs\['a'\]: 3.*xs\['b'\]: 4"):
        fn(jnp.zeros(2), {"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))})


def test_scalar_xs_leaf():
    fn = autopar.parallelize(lambda h, x: h)
    with pytest.raises(ValueError, match="leading time axis"):
        fn(jnp.zeros(2), jnp.float32(1.0))


def test_non_array_leaf():
    fn = autopar.parallelize(lambda h, x: h)
    with pytest.raises(TypeError, match=r"`h0\[1\]` is a str"):
        fn((jnp.zeros(2), "abc"), jnp.zeros((3, 2)))


def test_bad_calls_after_a_good_one_are_still_validated():
    """A call at a signature seen before skips validation (the eager fast path); any other call,
    a bad one included, is validated as the first was."""
    fn = autopar.parallelize(lambda h, x: 0.5 * h + x["a"])
    good = {"a": jnp.ones((3, 2)), "b": jnp.zeros((3,))}
    fn(jnp.zeros(2), good)
    assert fn(jnp.zeros(2), good).shape == (3, 2)
    with pytest.raises(TypeError, match=r"`xs\['b'\]` is a str"):
        fn(jnp.zeros(2), {"a": jnp.ones((3, 2)), "b": "abc"})
    with pytest.raises(ValueError, match=r"same leading \(time\) length"):
        fn(jnp.zeros(2), {"a": jnp.ones((3, 2)), "b": jnp.zeros((4,))})
    with pytest.raises(ValueError, match="disagrees"):
        fn(jnp.zeros(2), good, length=4)


def test_length_disagrees():
    fn = autopar.parallelize(lambda h, x: h)
    with pytest.raises(ValueError, match="disagrees"):
        fn(jnp.zeros(2), jnp.zeros((3, 2)), length=4)


def test_no_xs_no_length():
    with pytest.raises(ValueError, match="pass `length=T`"):
        autopar.parallelize(lambda h, x: h)(jnp.zeros(2), None)


def test_python_control_flow_is_explained():
    def cell(h, x):
        if h[0] > 0:  # Python control flow on a traced value
            return h
        return -h

    with pytest.raises(autopar.AutoparError, match=r"jnp.where.*lax.cond"):
        autopar.parallelize(cell)(jnp.zeros(2), jnp.zeros((3, 2)))


def test_forced_linear_on_nonlinear_cell():
    fn = autopar.parallelize(lambda h, x: jnp.tanh(h) + x, solver="linear")
    with pytest.raises(ValueError, match="does not apply to this cell.*nonlinear"):
        fn(jnp.zeros(2), jnp.zeros((3, 2)))


def test_scan_body_must_return_pair():
    """Inputs lax.scan rejects get lax.scan's own exception (type and wording: code written
    against lax.scan keeps working); autopar's reading of the problem is its __cause__."""
    with pytest.raises(TypeError, match="scan body output must be a pair") as e:
        autopar.scan(lambda c, x: c, jnp.zeros(2), jnp.zeros((3, 2)))
    assert "pair (new_carry, y)" in str(e.value.__cause__)


def test_scan_errors_are_lax_scans():
    with pytest.raises(ValueError, match=r"scan got `length` argument of 5 which disagrees"):
        autopar.scan(lambda c, x: (c, x), 0.0, jnp.arange(10.0), length=5)
    with pytest.raises(TypeError, match="must have the same pytree structure"):
        autopar.scan(lambda c, x: ((c, c), x), 0.0, jnp.arange(3.0))
    with pytest.raises(TypeError, match="lax.scan.*callable"):
        autopar.scan(42, 0.0, jnp.arange(3.0))
    f = jax.jit(lambda n, x: autopar.scan(lambda c, z: (c, z), x, None, n))
    with pytest.raises(jax.errors.ConcretizationTypeError, match="`length` argument to `scan`"):
        f(3, 1.0)


def test_bad_tol_and_max_iters():
    with pytest.raises(ValueError, match="`tol`"):
        autopar.parallelize(lambda h, x: h, tol=-1.0)
    with pytest.raises(ValueError, match="`max_iters`"):
        autopar.parallelize(lambda h, x: h, max_iters=0)


def test_errors_before_compute(monkeypatch):
    """Validation happens before any compilation: jit is never reached for bad xs."""
    called = []
    fn = autopar.parallelize(lambda h, x: h)
    monkeypatch.setattr(fn, "_jitted", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError):
        fn(jnp.zeros(2), {"a": jnp.zeros((3,)), "b": jnp.zeros((4,))})
    assert not called


def test_output_shape_mismatch_says_shape_not_dtype():
    fn = autopar.parallelize(lambda h, x: h[:3] + x[:3])
    with pytest.raises(TypeError, match=r"`h0` is float32\[3\].*is float32\[4\].*shape changed from \(4,\) to \(3,\)") as e:
        fn(jnp.zeros(4, jnp.float32), jnp.zeros((5, 4), jnp.float32))
    assert "astype" not in str(e.value)


def test_output_dtype_mismatch_says_cast():
    fn = autopar.parallelize(lambda h, x: (h + x).astype(jnp.float16))
    with pytest.raises(TypeError, match=r"dtype changed from float32 to float16.*\.astype\(h\.dtype\)"):
        fn(jnp.zeros(4, jnp.float32), jnp.zeros((5, 4), jnp.float32))


@pytest.mark.parametrize("cell", [lambda h: h, lambda h, x, y: h], ids=["one-arg", "three-args"])
def test_wrong_arity_says_how_autopar_calls_the_cell(cell, monkeypatch):
    from autopar import api

    monkeypatch.setattr(api, "analyse", lambda *a: pytest.fail("analysed a cell of the wrong arity"))
    fn = autopar.parallelize(cell)
    with pytest.raises(TypeError, match=r"calls the cell as `.*\(h, x\)`.*x is one time step of xs"):
        fn(jnp.zeros(2), jnp.zeros((3, 2)))


def test_wrong_arity_with_no_xs_says_x_is_none():
    fn = autopar.parallelize(lambda h: h + 1.0)
    with pytest.raises(TypeError, match=r"x is None \(xs=None\)"):
        fn(jnp.zeros(2), None, length=3)
    # and the fix works: a two-argument cell that ignores x
    out = autopar.parallelize(lambda h, x: h + 1.0)(jnp.zeros(2), None, length=3)
    assert out.shape == (3, 2) and float(out[-1, 0]) == 3.0


def test_method_with_wrong_arity():
    class M:
        @autopar.parallelize
        def step(self, h):
            return h

    with pytest.raises(TypeError, match=r"calls the cell as `.*M.step\(h, x\)`.*def step\(self, h, x\)"):
        M().step(jnp.zeros(2), jnp.zeros((3, 2)))
