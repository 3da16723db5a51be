"""Forward mode (jax.jvp, jax.linearize, jax.jacfwd, jax.hessian) through every solver and
adjoint strategy, against the same transformation of lax.scan.

The tangent of the trajectory solves the linear recurrence L ṽ = b (``autopar.adjoint``); the
forward solver is never differentiated. Reverse mode is the transpose of that linearisation and
must give the same gradients as before (and as lax.scan).
"""

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.solvers import solver_names

from .oracle import assert_trees_close, scan_states

SOLVERS = [n for n in solver_names()]
EXACT = ("sequential", "linear")
NEWTON = ("deer", "quasi-deer", "elk", "quasi-elk")
BACKWARDS = ("linear", "sequential")
D, T = 3, 7  # odd T
#: CI runs each (cell, solver) with one backward, alternating so every solver and every cell meets
#: both (test_linearize_and_jacfwd_match_scan and test_grad_unchanged take both backwards for every
#: solver); AUTOPAR_SLOW=1 runs the full cell × solver × backward matrix.
SLOW = os.environ.get("AUTOPAR_SLOW") == "1"


def _grid(*axes):
    """The product of ``axes`` plus a backward: all of BACKWARDS under AUTOPAR_SLOW=1, else the
    one picked by the parity of the axes' indices (a pairwise-covering half of the matrix)."""
    out = []
    for idx in itertools.product(*(range(len(a)) for a in axes)):
        vals = tuple(a[i] for a, i in zip(axes, idx))
        for b in (BACKWARDS if SLOW else (BACKWARDS[sum(idx) % len(BACKWARDS)],)):
            out.append((*vals, b))
    return out


def _r(i, shape, s=1.0, dtype=jnp.float64):
    return (s * jax.random.normal(jax.random.PRNGKey(i), shape)).astype(dtype)


# ---- cells: cell(p, h, x) -> h_new; params, h0, xs ---------------------------------------------


def dense_tanh(p, h, x):
    return jnp.tanh(p["W"] @ h + x + p["b"])


def dense_affine(p, h, x):
    return p["W"] @ h + jnp.sin(x)


def diag_gru(p, h, x):
    z = jax.nn.sigmoid(p["a"] * h + x)
    return (1 - z) * h + z * jnp.tanh(p["b"] * h + x)


def block_lstm(p, h, x):
    """(c, h): per-unit coupled, 2×2 blocks."""
    c, hh = h
    f = jax.nn.sigmoid(p["a"] * hh + x)
    c_new = f * c + (1 - f) * jnp.tanh(p["b"] * hh + x)
    return (c_new, jnp.tanh(c_new) * jax.nn.sigmoid(p["b"] * hh))


def counter(p, h, x):
    """An int32 step counter beside the float state, read by the float update."""
    v, k = h
    return (jnp.tanh(p["a"] * v + x + 0.1 * k.astype(v.dtype)), k + 1)


def int_xs(p, h, x):
    """An integer input leaf (token ids into a closed-over embedding)."""
    xf, tok = x
    return jnp.tanh(p["a"] * h + p["E"][tok] + xf)


def complex_holo(p, h, x):
    return p["lam"] * h + 0.1 * h * h + x


def complex_nonholo(p, h, x):
    """Not holomorphic in h (conj): tangents are R-linear, the linear adjoint declines."""
    return p["lam"] * h + 0.1 * jnp.conj(h) * h + x


def deltanet(p, S, x):
    """A matrix state acted on from the left by (I − β k kᵀ)."""
    k, v, g = x
    k, beta = k / jnp.linalg.norm(k), jax.nn.sigmoid(g + p["g"])
    return S - beta * jnp.outer(k, k @ S) + beta * jnp.outer(k, v)


def _case(name, T=T):
    x = _r(2, (T, D), 0.5)
    h = _r(3, (D,), 0.3)
    if name == "dense_tanh":
        return {"W": _r(0, (D, D), 0.4), "b": _r(1, (D,), 0.1)}, h, x
    if name == "dense_affine":
        return {"W": _r(0, (D, D), 0.4)}, h, x
    if name == "diag_gru":
        return {"a": _r(0, (D,), 0.6), "b": _r(1, (D,), 0.6)}, h, x
    if name == "block_lstm":
        return {"a": _r(0, (D,)), "b": _r(1, (D,))}, (h, 0.5 * h), x
    if name == "counter":
        return {"a": _r(0, (D,), 0.6)}, (h, jnp.asarray(3, jnp.int32)), x
    if name == "int_xs":
        tok = jax.random.randint(jax.random.PRNGKey(4), (T,), 0, 5)
        return {"a": _r(0, (D,), 0.6), "E": _r(1, (5, D))}, h, (x, tok)
    if name in ("complex_holo", "complex_nonholo"):
        lam = (0.8 * jnp.exp(1j * 3.0 * jax.random.uniform(jax.random.PRNGKey(5), (D,)))).astype(jnp.complex128)
        xc = (x + 0.3j * _r(6, (T, D))).astype(jnp.complex128)
        return {"lam": lam}, (h + 0.2j).astype(jnp.complex128), xc
    if name == "deltanet":
        dk, dv = 3, 2
        xs = (_r(7, (T, dk)), _r(8, (T, dv)), _r(9, (T,)))
        return {"g": jnp.asarray(0.3, jnp.float64)}, _r(10, (dk, dv), 0.3), xs
    raise KeyError(name)


CELLS = {"dense_tanh": dense_tanh, "dense_affine": dense_affine, "diag_gru": diag_gru, "block_lstm": block_lstm,
         "counter": counter, "int_xs": int_xs, "complex_holo": complex_holo,
         "complex_nonholo": complex_nonholo, "deltanet": deltanet}


def _options(solver, cell=None, p=None, h=None, x=None):
    """``fallback=False`` for a Newton solver where it converges on this case (then the tangent
    comes from that solver's own solution), else the default chain."""
    if solver not in NEWTON:
        return {}
    if cell is None:
        return {"fallback": False}
    _, info = autopar.parallelize(functools.partial(cell, p), solver=solver, fallback=False)(h, x, return_info=True)
    return {"fallback": False} if bool(info.converged) else {}


def _fns(name, solver, backward, case=None, **kw):
    """(autopar trajectory fn, lax.scan trajectory fn), both of (params, h0, xs)."""
    cell = CELLS[name]
    opts = _options(solver, cell, *(case or _case(name)))

    def ap(p, h, x):
        return autopar.parallelize(functools.partial(cell, p), solver=solver, backward=backward,
                                   **opts, **kw)(h, x)

    def ref(p, h, x):
        return scan_states(functools.partial(cell, p), h, x)

    return ap, ref


def _applies_or_skip(name, solver, backward, p, h, x):
    try:
        autopar.parallelize(functools.partial(CELLS[name], p), solver=solver, backward=backward).explain(h, x)
    except ValueError as e:
        if "does not apply" in str(e) or "cannot be used" in str(e):
            pytest.skip(f"{solver}/{backward}: {str(e).splitlines()[0][:120]}")
        raise


def _tangents(args, scale=1.0):
    """Deterministic tangents for the float leaves, float0 zeros for the integer ones."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    out = []
    for i, l in enumerate(leaves):
        l = jnp.asarray(l)
        if jnp.issubdtype(l.dtype, jnp.inexact):
            t = _r(100 + i, l.shape, scale, jnp.float64)
            if jnp.issubdtype(l.dtype, jnp.complexfloating):
                t = t + 1j * _r(200 + i, l.shape, scale, jnp.float64)
            out.append(t.astype(l.dtype))
        else:
            out.append(np.zeros(l.shape, jax.dtypes.float0))
    return jax.tree_util.tree_unflatten(tree, out)


def _rtol(solver):
    return 1e-9 if solver in EXACT else 1e-7


# ---- the matrix: every cell × solver × backward, jax.jvp -----------------------------------------


@pytest.mark.parametrize("name,solver,backward", _grid(list(CELLS), SOLVERS))
def test_jvp_matches_scan(name, solver, backward):
    p, h, x = _case(name)
    _applies_or_skip(name, solver, backward, p, h, x)
    ap, ref = _fns(name, solver, backward)
    primals = (p, h, x)
    tangents = _tangents(primals)
    got = jax.jvp(ap, primals, tangents)
    want = jax.jvp(ref, primals, tangents)
    assert_trees_close(got, want, rtol=_rtol(solver), err_msg=f"{name} {solver} {backward}")


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_linearize_and_jacfwd_match_scan(solver, backward):
    name = "dense_tanh" if solver != "linear" else "dense_affine"
    p, h, x = _case(name)
    _applies_or_skip(name, solver, backward, p, h, x)
    ap, ref = _fns(name, solver, backward)
    tangents = _tangents((p, h, x))
    out, lin = jax.linearize(ap, p, h, x)
    out_r, lin_r = jax.linearize(ref, p, h, x)
    assert_trees_close(out, out_r, rtol=_rtol(solver))
    assert_trees_close(lin(*tangents), lin_r(*tangents), rtol=_rtol(solver))
    # jacfwd = vmap of jvp over the basis: the tangent solve batched
    jf = jax.jacfwd(ap, argnums=(0, 1))(p, h, x)
    jr = jax.jacfwd(ref, argnums=(0, 1))(p, h, x)
    assert_trees_close(jf, jr, rtol=_rtol(solver))


@pytest.mark.parametrize("solver", ["sequential", "deer", "quasi-elk"])
def test_jit_and_vmap_of_jvp(solver):
    name = "diag_gru"
    p, h, x = _case(name)
    ap, ref = _fns(name, solver, "auto")
    th = _r(11, (4, D))  # a batch of tangents of h0

    def jvp_h(fn, t):
        return jax.jvp(lambda h_: fn(p, h_, x), (h,), (t,))[1]

    got = jax.jit(jax.vmap(functools.partial(jvp_h, ap)))(th)
    want = jax.vmap(functools.partial(jvp_h, ref))(th)
    assert_trees_close(got, want, rtol=_rtol(solver))
    # batched primals too: vmap over sequences of the jvp
    xb = jnp.stack([x, 0.5 * x, -x])
    got = jax.vmap(lambda xx: jax.jvp(lambda x_: ap(p, h, x_), (xx,), (xx,)))(xb)
    want = jax.vmap(lambda xx: jax.jvp(lambda x_: ref(p, h, x_), (xx,), (xx,)))(xb)
    assert_trees_close(got, want, rtol=_rtol(solver))


@pytest.mark.parametrize("T_", [0, 1, 2, 5])
@pytest.mark.parametrize("solver", ["sequential", "deer"])
def test_short_lengths(T_, solver):
    p, h, x = _case("dense_tanh", T=T_)
    ap, ref = _fns("dense_tanh", solver, "auto", case=(p, h, x))
    tangents = _tangents((p, h, x))
    assert_trees_close(jax.jvp(ap, (p, h, x), tangents), jax.jvp(ref, (p, h, x), tangents), rtol=_rtol(solver))


# ---- autopar.scan: reverse, xs=None, ys, pytrees ------------------------------------------------


def _body(p, c, x):
    v, k = c
    v = jnp.tanh(p["W"] @ v + x["u"] * p["b"] + 0.05 * k)
    return (v, k + 1), {"y": jnp.sum(v * x["u"]), "k": k}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("solver", ["sequential", "deer", "elk"])
def test_scan_pytree_reverse(solver, reverse):
    p = {"W": _r(0, (D, D), 0.4), "b": _r(1, (D,), 0.5)}
    init = (_r(2, (D,), 0.3), jnp.asarray(0, jnp.int32))
    xs = {"u": _r(3, (T, D))}

    def ap(p, c, xs):
        return autopar.scan(functools.partial(_body, p), c, xs, reverse=reverse, solver=solver, **_options(solver))

    def ref(p, c, xs):
        return jax.lax.scan(functools.partial(_body, p), c, xs, reverse=reverse)

    tangents = _tangents((p, init, xs))
    assert_trees_close(jax.jvp(ap, (p, init, xs), tangents), jax.jvp(ref, (p, init, xs), tangents), rtol=_rtol(solver))
    out, lin = jax.linearize(ap, p, init, xs)
    out_r, lin_r = jax.linearize(ref, p, init, xs)
    assert_trees_close(lin(*tangents), lin_r(*tangents), rtol=_rtol(solver))


@pytest.mark.parametrize("solver", ["sequential", "deer"])
def test_scan_xs_none(solver):
    W = _r(0, (D, D), 0.4)

    def body(W, c, _):
        c = jnp.tanh(W @ c + 0.1)
        return c, jnp.sum(c)

    def ap(W, c):
        return autopar.scan(functools.partial(body, W), c, None, length=T, solver=solver, **_options(solver))

    def ref(W, c):
        return jax.lax.scan(functools.partial(body, W), c, None, length=T)

    c0 = _r(1, (D,), 0.3)
    tangents = (_r(2, (D, D)), _r(3, (D,)))
    assert_trees_close(jax.jvp(ap, (W, c0), tangents), jax.jvp(ref, (W, c0), tangents), rtol=_rtol(solver))


def test_float32():
    p, h, x = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _case("diag_gru"))
    ap, ref = _fns("diag_gru", "deer", "auto", case=(p, h, x))
    tangents = _tangents((p, h, x))
    got = jax.jvp(ap, (p, h, x), tangents)
    want = jax.jvp(ref, (p, h, x), tangents)
    assert got[1].dtype == jnp.float32
    assert_trees_close(got, want, rtol=1e-4)


# ---- second order: every combination JAX allows ---------------------------------------------------


HESSIAN_SOLVERS = ["sequential", "deer", "quasi-deer", "elk", "quasi-elk"]
#: the four second-order compositions; CI takes two per solver, rotating with the solver so each
#: composition meets at least two solvers and both backwards (AUTOPAR_SLOW=1: all four everywhere)
SECOND_ORDER = ("hessian", "jacfwd∘jacfwd", "jacrev∘jacfwd", "jacrev∘jacrev")


@pytest.mark.parametrize("solver,backward", _grid(HESSIAN_SOLVERS))
def test_hessian(solver, backward):
    p, h, x = _case("dense_tanh", T=4)
    w = _r(12, (4, D))

    def loss(fn):
        return lambda h_: jnp.sum(w * fn(p, h_, x)) + 0.5 * jnp.sum(fn(p, h_, x) ** 2)

    ap, ref = _fns("dense_tanh", solver, backward, case=(p, h, x))
    want = jax.hessian(loss(ref))(h)
    tol = dict(rtol=_rtol(solver) * 10, atol=1e-9)
    ways = {"hessian": jax.hessian,  # jacfwd ∘ jacrev
            "jacfwd∘jacfwd": lambda f: jax.jacfwd(jax.jacfwd(f)),
            "jacrev∘jacfwd": lambda f: jax.jacrev(jax.jacfwd(f)),
            "jacrev∘jacrev": lambda f: jax.jacrev(jax.jacrev(f))}
    k = HESSIAN_SOLVERS.index(solver)
    i = k + k // 2  # offsets 0, 1, 3, 4, 6: every composition meets both backwards
    picked = SECOND_ORDER if SLOW else (SECOND_ORDER[i % 4], SECOND_ORDER[(i + 2) % 4])
    for way in picked:
        np.testing.assert_allclose(ways[way](loss(ap))(h), want, **tol, err_msg=way)


def test_hessian_wrt_params():
    p, h, x = _case("diag_gru", T=5)
    ap, ref = _fns("diag_gru", "deer", "auto", case=(p, h, x))
    loss = lambda fn: lambda p_: jnp.sum(jnp.sin(fn(p_, h, x)))  # noqa: E731
    assert_trees_close(jax.hessian(loss(ap))(p), jax.hessian(loss(ref))(p), rtol=1e-7)


# ---- reverse mode: unchanged numbers -------------------------------------------------------------


def _explicit_adjoint(cell, p, h0, xs, g):
    """The implicit adjoint written out: λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1}, then one VJP per step."""
    hs = scan_states(functools.partial(cell, p), h0, xs)
    prev = jnp.concatenate([h0[None], hs[:-1]])
    lam, d_p, d_x = jnp.zeros_like(h0), jax.tree_util.tree_map(jnp.zeros_like, p), []
    for t in reversed(range(xs.shape[0])):
        _, vjp = jax.vjp(cell, p, prev[t], xs[t])
        dp_t, lam, dx_t = vjp(g[t] + lam)
        d_p = jax.tree_util.tree_map(jnp.add, d_p, dp_t)
        d_x.append(dx_t)
    return d_p, lam, jnp.stack(d_x[::-1])


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_grad_unchanged(solver, backward):
    """jax.vjp through the transposed tangent solve equals the implicit adjoint written out."""
    name = "dense_tanh" if solver != "linear" else "dense_affine"
    p, h, x = _case(name)
    _applies_or_skip(name, solver, backward, p, h, x)
    ap, ref = _fns(name, solver, backward)
    g = _r(13, (T, D))
    got = jax.vjp(ap, p, h, x)[1](g)
    want = _explicit_adjoint(CELLS[name], p, h, x, g)
    assert_trees_close(got, want, rtol=_rtol(solver) if solver not in EXACT else 1e-12)
    assert_trees_close(got, jax.vjp(ref, p, h, x)[1](g), rtol=_rtol(solver) if solver not in EXACT else 1e-12)


def test_reverse_mode_runs_only_the_adjoint(monkeypatch):
    """jax.grad executes the transpose solve (λ) and never the forward tangent solve (which
    custom_linear_solve only traces); jax.jvp executes the tangent solve only."""
    from autopar import adjoint

    ran = []

    def spy(orig, meth):
        def wrapped(self, *a):
            out = orig(self, *a)
            jax.debug.callback(lambda: ran.append(meth))  # runs only if this solve is executed
            return out
        return wrapped

    for cls in (adjoint.LinearAdjoint, adjoint.SequentialAdjoint):
        for meth in ("tangent_solve", "transpose_solve"):
            monkeypatch.setattr(cls, meth, spy(getattr(cls, meth), meth))
    p, h, x = _case("dense_tanh")
    for backward in BACKWARDS:
        ap, _ = _fns("dense_tanh", "deer", backward)
        ran.clear()
        jax.block_until_ready(jax.grad(lambda h_: jnp.sum(ap(p, h_, x)))(h))
        assert ran == ["transpose_solve"], (backward, ran)
        ran.clear()
        jax.block_until_ready(jax.jvp(lambda h_: ap(p, h_, x), (h,), (h,)))
        assert ran == ["tangent_solve"], (backward, ran)


# ---- custom_vjp inside the cell: reverse mode uses its rule; forward mode raises -------------------


@jax.custom_vjp
def clip_grad(x):
    return x


clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.05, 0.05),))


def clipped(p, h, x):
    return clip_grad(jnp.tanh(p["W"] @ h + x))


@pytest.mark.parametrize("solver", ["sequential", "deer"])
def test_custom_vjp_cell(solver):
    p = {"W": _r(0, (D, D), 0.4)}
    h, x = _r(1, (D,), 0.3), _r(2, (T, D))

    def ap(p_, h_):
        return autopar.parallelize(functools.partial(clipped, p_), solver=solver, **_options(solver))(h_, x)

    def ref(p_, h_):
        return scan_states(functools.partial(clipped, p_), h_, x)

    loss = lambda fn: lambda p_, h_: jnp.sum(fn(p_, h_) ** 2)  # noqa: E731
    assert_trees_close(jax.grad(loss(ap), argnums=(0, 1))(p, h), jax.grad(loss(ref), argnums=(0, 1))(p, h),
                       rtol=_rtol(solver))
    with pytest.raises(autopar.AutoparError, match="custom_vjp"):
        jax.jvp(lambda h_: ap(p, h_), (h,), (h,))
    with pytest.raises(autopar.AutoparError, match="custom_vjp"):
        jax.jacfwd(lambda h_: ap(p, h_))(h)


def test_custom_jvp_cell_forward_mode():
    """A custom_jvp in the cell: forward mode uses its rule (as lax.scan's jvp does)."""

    @jax.custom_jvp
    def softclip(z):
        return jnp.tanh(z)

    softclip.defjvp(lambda pr, t: (softclip(pr[0]), 0.5 * t[0]))  # a deliberately "wrong" rule

    def cell(p, h, x):
        return softclip(p["W"] @ h + x)

    p = {"W": _r(0, (D, D), 0.4)}
    h, x = _r(1, (D,), 0.3), _r(2, (T, D))
    for solver in ("sequential", "deer"):
        ap = lambda h_: autopar.parallelize(functools.partial(cell, p), solver=solver)(h_, x)  # noqa: E731
        ref = lambda h_: scan_states(functools.partial(cell, p), h_, x)  # noqa: E731
        assert_trees_close(jax.jvp(ap, (h,), (h,)), jax.jvp(ref, (h,), (h,)), rtol=_rtol(solver))


def test_autodiff_backward_still_forward_differentiable():
    p, h, x = _case("dense_tanh")
    ap, ref = _fns("dense_tanh", "sequential", "autodiff")
    tangents = _tangents((p, h, x))
    assert_trees_close(jax.jvp(ap, (p, h, x), tangents), jax.jvp(ref, (p, h, x), tangents), rtol=1e-12)
