"""Forward mode (jax.jvp, jax.linearize, jax.jacfwd, jax.hessian, jacrev∘jacfwd) through every
solver and both backward modes, against the same transformations of lax.scan.

The implicit rule is a custom_jvp whose tangent is a linear recurrence at the solution; reverse
mode is its transpose. Small T and D keep this file quick.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.solvers import solver_names

pytestmark = pytest.mark.filterwarnings("ignore::autopar.FallbackWarning")

from .oracle import assert_trees_close, scan_states

SOLVERS = [n for n in solver_names()]
EXACT = ("sequential", "linear")
BACKWARDS = ("linear", "sequential")
T, D = 7, 3


# ---------------------------------------------------------------------------------------------
# cells: cell(p, h, x) -> h_new, with a weight p the tests differentiate


def dense(p, h, x):
    return jnp.tanh(p @ h + x)


def diag(p, h, x):
    return jnp.tanh(p * h + x)


def diag_affine(p, h, x):
    return p * h + jnp.sin(x)


def lstm_like(p, h, x):
    """(c, h) per-unit coupled: block-diagonal J with 2×2 blocks."""
    c, hh = h
    f = jax.nn.sigmoid(p * hh + x)
    c_new = f * c + (1 - f) * jnp.tanh(0.5 * hh + x)
    return c_new, jnp.tanh(c_new) * jax.nn.sigmoid(p * hh - x)


def deltanet(p, S, x):
    """S ← S − β (S k − v) kᵀ, S of shape (dv, dk); affine in S (a Kronecker-structured J)."""
    k = x["k"] / jnp.linalg.norm(x["k"])
    v = p @ x["v"]
    beta = jax.nn.sigmoid(x["g"])
    return S - beta * jnp.outer(S @ k - v, k)


def counter(p, h, x):
    """A float state beside an int32 step counter (no tangent) the float update reads."""
    v, n = h
    return jnp.tanh(p * v + x + 0.1 * n.astype(v.dtype)), n + 1


def complex_holo(p, h, x):
    return p * h + 0.1 * h * h + x


CELLS = {"dense": dense, "diag": diag, "diag_affine": diag_affine, "lstm_like": lstm_like,
         "deltanet": deltanet, "counter": counter, "complex_holo": complex_holo}


def _setup(name, T=T):
    k = jax.random.split(jax.random.PRNGKey(3), 6)
    x = 0.5 * jax.random.normal(k[0], (T, D))
    h = 0.3 * jax.random.normal(k[1], (D,))
    if name == "dense":
        return 0.4 * jax.random.normal(k[2], (D, D)), h, x
    if name in ("diag", "diag_affine", "counter"):
        p = 0.6 * jax.random.normal(k[2], (D,))
        return p, ((h, jnp.asarray(3, jnp.int32)) if name == "counter" else h), x
    if name == "lstm_like":
        return jax.random.normal(k[2], (D,)), (h, 0.5 * h), x
    if name == "deltanet":
        xs = {"k": jax.random.normal(k[3], (T, 3)), "v": jax.random.normal(k[4], (T, 2)),
              "g": jax.random.normal(k[5], (T,))}
        return 0.5 * jax.random.normal(k[2], (2, 2)), 0.3 * jax.random.normal(k[1], (2, 3)), xs
    if name == "complex_holo":
        lam = (0.8 * jnp.exp(1j * jax.random.uniform(k[2], (D,)) * 3.0)).astype(jnp.complex128)
        xc = (x + 0.3j * jax.random.normal(k[3], (T, D))).astype(jnp.complex128)
        return lam, (h + 0.2j).astype(jnp.complex128), xc
    raise KeyError(name)


def _tangent(tree, seed):
    """A pseudo-random tangent for every inexact leaf; float0 zeros for integer leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for l in leaves:
        l = jnp.asarray(l)
        if not jnp.issubdtype(l.dtype, jnp.inexact):
            out.append(np.zeros(l.shape, jax.dtypes.float0))
            continue
        t = rng.standard_normal(l.shape)
        if jnp.issubdtype(l.dtype, jnp.complexfloating):
            t = t + 1j * rng.standard_normal(l.shape)
        out.append(jnp.asarray(t, l.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _loss(hs):
    """A real scalar of the float leaves of a trajectory."""
    total = 0.0
    for i, h in enumerate(jax.tree_util.tree_leaves(hs)):
        if jnp.issubdtype(h.dtype, jnp.inexact):
            w = jnp.cos(jnp.arange(h.size, dtype=jnp.float64) + i).reshape(h.shape)
            total = total + jnp.sum(jnp.real(w * h)) + 0.5 * jnp.sum(jnp.abs(h) ** 2)
    return total


def _runners(name, solver, backward):
    cell = CELLS[name]

    def ap(p, h0, xs):
        return autopar.parallelize(functools.partial(cell, p), solver=solver, backward=backward)(h0, xs)

    def ref(p, h0, xs):
        return scan_states(functools.partial(cell, p), h0, xs)

    return ap, ref


def _rtol(solver):
    return 1e-10 if solver in EXACT else 1e-7  # iterative solvers: the trajectory is accurate to their tol


def _skip_unless_applies(name, solver, backward):
    """Skip when the forced solver/backward does not apply (read off the plan, no program run)."""
    if solver == "sequential" or (solver in ("deer", "quasi-deer", "elk", "quasi-elk") and name != "counter"
                                  and name != "complex_holo"):
        return  # these always apply to the cells here, both backward modes
    p, h0, xs = _setup(name)
    try:
        autopar.parallelize(functools.partial(CELLS[name], p), solver=solver, backward=backward).explain(h0, xs)
    except ValueError as e:
        if "does not apply" in str(e) or "backward='linear'" in str(e):
            pytest.skip(f"{solver}/{backward}: {str(e).splitlines()[0][:100]}")
        raise


# ---------------------------------------------------------------------------------------------
# the main matrix: jax.jvp wrt (weight, h0, xs) for every cell, solver and backward


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", list(CELLS))
def test_jvp_matches_scan(name, solver, backward):
    _skip_unless_applies(name, solver, backward)
    ap, ref = _runners(name, solver, backward)
    primals = _setup(name)
    tangents = _tangent(primals, 0)
    got = jax.jvp(ap, primals, tangents)
    want = jax.jvp(ref, primals, tangents)
    assert_trees_close(got, want, rtol=_rtol(solver), err_msg=f"{name} {solver} {backward}")


@pytest.mark.parametrize("solver", ["sequential", "deer"])
@pytest.mark.parametrize("name", ["dense", "lstm_like", "deltanet", "counter"])
def test_linearize_and_jacfwd(name, solver):
    _skip_unless_applies(name, solver, "auto")
    ap, ref = _runners(name, solver, "auto")
    p, h0, xs = _setup(name)
    t = _tangent((p, h0, xs), 1)
    y, lin = jax.linearize(ap, p, h0, xs)
    y_ref, lin_ref = jax.linearize(ref, p, h0, xs)
    assert_trees_close(y, y_ref, rtol=_rtol(solver))
    assert_trees_close(lin(*t), lin_ref(*t), rtol=_rtol(solver))
    # jacfwd of the loss wrt the weight and the float part of h0 = jax.grad of lax.scan's
    float_h0 = lambda h: h[0] if name == "counter" else h  # noqa: E731
    with_h = lambda h: (h, h0[1]) if name == "counter" else h  # noqa: E731
    got = jax.jacfwd(lambda p, h: _loss(ap(p, with_h(h), xs)), argnums=(0, 1))(p, float_h0(h0))
    want = jax.grad(lambda p, h: _loss(ref(p, with_h(h), xs)), argnums=(0, 1))(p, float_h0(h0))
    assert_trees_close(got, want, rtol=_rtol(solver))


def test_complex_holomorphic_jacfwd():
    name = "complex_holo"
    for solver in ("sequential", "deer"):
        ap, ref = _runners(name, solver, "auto")
        p, h0, xs = _setup(name)
        got = jax.jacfwd(lambda h: ap(p, h, xs), holomorphic=True)(h0)
        want = jax.jacfwd(lambda h: ref(p, h, xs), holomorphic=True)(h0)
        assert_trees_close(got, want, rtol=_rtol(solver))


# ---------------------------------------------------------------------------------------------
# second order: jax.hessian (forward-over-reverse) and jacrev∘jacfwd, every solver


def _second_order_case(name, solver, backward):
    _skip_unless_applies(name, solver, backward)
    ap, ref = _runners(name, solver, backward)
    p, h0, xs = _setup(name, T=5)
    return ap, ref, p, h0, xs


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "linear"])
def test_hessian_dense(solver, backward):
    """jax.hessian of a loss wrt (weight, h0) through the implicit rule at both orders."""
    ap, ref, p, h0, xs = _second_order_case("dense", solver, backward)
    got = jax.hessian(lambda p, h: _loss(ap(p, h, xs)), argnums=(0, 1))(p, h0)
    want = jax.hessian(lambda p, h: _loss(ref(p, h, xs)), argnums=(0, 1))(p, h0)
    assert_trees_close(got, want, rtol=10 * _rtol(solver))


@pytest.mark.parametrize("name,solver,backward", [
    ("diag_affine", "linear", "linear"), ("diag_affine", "linear", "sequential"),
    ("lstm_like", "deer", "linear"), ("deltanet", "linear", "linear"), ("counter", "quasi-deer", "sequential"),
])
def test_hessian_other_structures(name, solver, backward):
    ap, ref, p, h0, xs = _second_order_case(name, solver, backward)
    got = jax.hessian(lambda p: _loss(ap(p, h0, xs)))(p)
    want = jax.hessian(lambda p: _loss(ref(p, h0, xs)))(p)
    assert_trees_close(got, want, rtol=10 * _rtol(solver))


@pytest.mark.parametrize("name,solver,backward", [
    ("dense", "sequential", "linear"), ("dense", "elk", "sequential"), ("lstm_like", "quasi-elk", "linear"),
])
def test_jacrev_of_jacfwd(name, solver, backward):
    ap, ref, p, h0, xs = _second_order_case(name, solver, backward)
    leaf = lambda h: h[1] if name == "lstm_like" else h  # noqa: E731
    got = jax.jacrev(jax.jacfwd(lambda h: leaf(ap(p, h, xs))[-1]))(h0)
    want = jax.jacrev(jax.jacfwd(lambda h: leaf(ref(p, h, xs))[-1]))(h0)
    assert_trees_close(got, want, rtol=10 * _rtol(solver))


# ---------------------------------------------------------------------------------------------
# jit, vmap, autopar.scan, backward="autodiff", custom_vjp cells


@pytest.mark.parametrize("backward", BACKWARDS)
def test_jvp_under_jit_and_vmap(backward):
    ap, ref = _runners("diag", "deer", backward)
    p, h0, xs = _setup("diag")
    hs0 = jnp.stack([h0, -h0, 2 * h0])
    th = jnp.stack([jnp.ones_like(h0), h0, -h0])

    def jvp_of(fn):
        return lambda h, t: jax.jvp(lambda h: fn(p, h, xs), (h,), (t,))

    want = jax.vmap(jvp_of(ref))(hs0, th)
    assert_trees_close(jax.jit(jax.vmap(jvp_of(ap)))(hs0, th), want, rtol=1e-7)
    assert_trees_close(jax.vmap(jvp_of(jax.jit(ap)))(hs0, th), want, rtol=1e-7)


def test_scan_drop_in_jvp_and_hessian():
    p, h0, xs = _setup("dense")

    def f(c, x):
        c = dense(p, c, x)
        return c, jnp.sum(c ** 2)

    def loss(scan, h):
        c, ys = scan(f, h, xs)
        return jnp.sum(c) + jnp.sum(ys)

    for solver in ("sequential", "deer"):
        ap_scan = functools.partial(autopar.scan, solver=solver)
        got = jax.jvp(lambda h: ap_scan(f, h, xs), (h0,), (jnp.ones_like(h0),))
        want = jax.jvp(lambda h: jax.lax.scan(f, h, xs), (h0,), (jnp.ones_like(h0),))
        assert_trees_close(got, want, rtol=_rtol(solver))
        assert_trees_close(jax.hessian(functools.partial(loss, ap_scan))(h0),
                           jax.hessian(functools.partial(loss, jax.lax.scan))(h0), rtol=10 * _rtol(solver))


def test_autodiff_backward_still_supports_forward_mode():
    ap, ref = _runners("diag_affine", "linear", "autodiff")
    primals = _setup("diag_affine")
    tangents = _tangent(primals, 2)
    assert_trees_close(jax.jvp(ap, primals, tangents), jax.jvp(ref, primals, tangents), rtol=1e-12)


@jax.custom_vjp
def clip_gradient(x):
    return x


clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))


def test_custom_vjp_cell_reverse_only_with_clear_error():
    """JAX cannot push tangents through a custom_vjp: reverse mode uses the sequential adjoint
    (the clipped gradient, as lax.scan's), forward mode names the custom_vjp."""
    p, h0, xs = _setup("diag")
    cell = lambda h, x: jnp.tanh(p * clip_gradient(h) + x)  # noqa: E731
    fn = autopar.parallelize(cell, solver="sequential")
    got = jax.grad(lambda h: _loss(fn(h, xs)))(h0)
    want = jax.grad(lambda h: _loss(scan_states(cell, h, xs)))(h0)
    assert_trees_close(got, want, rtol=1e-12)
    with pytest.raises(autopar.AutoparError, match="clip_gradient"):
        jax.jvp(lambda h: fn(h, xs), (h0,), (h0,))


def test_grad_saves_no_step_intermediates():
    """Reverse mode saves inputs and the trajectory only: for a cell with a wide hidden layer the
    residuals of jax.vjp hold no (T, hidden) array other than the inputs xs."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    W1, W2 = 0.3 * jax.random.normal(k[0], (16, D)), 0.1 * jax.random.normal(k[1], (D, 16))
    xs = jax.random.normal(k[2], (T, 16))
    h0 = jax.random.normal(k[3], (D,))
    cell = lambda W1, h, x: jnp.tanh(W2 @ jnp.tanh(W1 @ h + x))  # noqa: E731
    for solver, backward in (("sequential", "sequential"), ("deer", "linear")):
        def f(W1, h):
            return _loss(autopar.parallelize(functools.partial(cell, W1), solver=solver, backward=backward)(h, xs))

        _, vjp = jax.vjp(f, W1, h0)
        wide = [l.shape for l in jax.tree_util.tree_leaves(vjp) if getattr(l, "shape", ()) == (T, 16)]
        assert len(wide) == 1, (solver, backward, wide)  # xs itself
