"""autopar.scan as lax.scan (issue 11): side effects run once per step, in order; a sequential
plan runs the body as one pass; the cache recognises a re-created body by what it captures."""

import functools
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import api

T = 7  # odd
D = 3


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _recorder():
    calls = []

    def body(c, x):
        jax.debug.callback(lambda t: calls.append(round(float(t), 6)), x[0])
        h = jnp.tanh(0.5 * c + x)
        return h, (h.sum(), c * x)

    return calls, body


def _xs(dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(0), (T, D)).astype(dtype)


# ---- side effects -----------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("how", ["eager", "jit", "value_and_grad", "vmap", "jvp"])
def test_effects_run_once_per_step_in_order_like_lax_scan(how, reverse):
    xs = _xs()
    counts = {}
    for name, scan in (("lax", jax.lax.scan), ("autopar", autopar.scan)):
        calls, body = _recorder()
        run = lambda c, xs: scan(body, c, xs, reverse=reverse)  # noqa: E731
        loss = lambda c, xs: jnp.sum(run(c, xs)[0]) + jnp.sum(run(c, xs)[1][0])  # noqa: E731
        c0 = jnp.zeros(D)
        if how == "eager":
            out = run(c0, xs)
        elif how == "jit":
            out = jax.jit(run)(c0, xs)
        elif how == "value_and_grad":
            calls_before = len(calls)
            out = jax.value_and_grad(lambda c: jnp.sum(run(c, xs)[0]))(c0)
            assert len(calls) - calls_before >= 0
        elif how == "vmap":
            out = jax.vmap(run, in_axes=(0, None))(jnp.zeros((2, D)), xs)
        else:
            out = jax.jvp(lambda c: run(c, xs), (c0,), (jnp.ones(D),))
        jax.block_until_ready(out)
        counts[name] = (list(calls), out)
    del loss
    assert counts["autopar"][0] == counts["lax"][0]  # same calls, same order
    assert len(counts["lax"][0]) >= T
    _close(counts["autopar"][1], counts["lax"][1])


def test_effects_explained_and_parallel_solver_refused():
    _, body = _recorder()
    rep = autopar.explain(body, jnp.zeros(D), _xs())
    assert rep.plan.solver == "sequential" and rep.plan.backward == "autodiff"
    assert "side effects (debug_callback)" in rep.plan.reason and "once per step" in str(rep)
    with pytest.raises(ValueError, match=r"solver='deer' cannot run .*side effects \(debug_callback\).*solver='auto'"):
        autopar.scan(body, jnp.zeros(D), _xs(), solver="deer")
    with pytest.raises(ValueError, match=r"backward='linear' cannot be used.*side effects.*backward='auto'"):
        autopar.scan(body, jnp.zeros(D), _xs(), backward="linear")
    # a config default gives way: the body still runs once per step
    calls, body = _recorder()
    with autopar.config.override(solver="deer"):
        autopar.scan(body, jnp.zeros(D), _xs())
    assert len(calls) == T


def test_effects_in_parallelize_cell_run_once():
    calls = []

    def cell(h, x):
        jax.debug.callback(lambda t: calls.append(float(t)), x[0])
        return jnp.tanh(0.5 * h + x)

    xs = _xs()
    fn = autopar.parallelize(cell)
    hs, info = fn(jnp.zeros(D), xs, return_info=True)
    assert len(calls) == T and info.solver == "sequential" and float(info.residual) == 0.0
    calls.clear()
    g = jax.grad(lambda h: jnp.sum(fn(h, xs)))(jnp.zeros(D))
    want = jax.grad(lambda h: jnp.sum(jax.lax.scan(lambda c, x: (cell(c, x),) * 2, h, xs)[1]))(jnp.zeros(D))
    assert len(calls) == 2 * T  # ours, then lax.scan's: once per step each
    _close(g, want)


def test_io_callback_ordered_runs_in_order():
    from jax.experimental import io_callback

    seen = []

    def body(c, x):
        io_callback(lambda t: seen.append(float(t)) or np.zeros((), np.float32), jax.ShapeDtypeStruct((), jnp.float32),
                    x, ordered=True)
        return c + x, c

    xs = jnp.arange(5.0)
    got = autopar.scan(body, 0.0, xs)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    _close(got, jax.lax.scan(body, 0.0, xs))
    assert "io_callback" in autopar.explain(body, 0.0, xs).plan.reason


# ---- a sequential plan is one pass -------------------------------------------------------------
def test_sequential_plan_runs_the_body_once():
    """No second vmapped pass of the body: the compiled program evaluates it in one scan."""
    W = jax.random.normal(jax.random.PRNGKey(1), (D, D)) * 0.5

    def f(c, x):
        h = jnp.tanh(W @ c + x)
        return h, h * 2.0

    xs = _xs()
    jaxpr = jax.make_jaxpr(lambda c, xs: autopar.scan(f, c, xs, solver="sequential"))(jnp.zeros(D), xs)
    text = str(jaxpr)
    assert text.count("tanh") == 1, text
    # ... and its derivatives stay the planned implicit adjoint (linear or sequential), equal to lax.scan's
    assert autopar.explain(f, jnp.zeros(D), xs, solver="sequential").plan.backward in ("linear", "sequential")


@pytest.mark.parametrize("backward, dtype, reverse", [("linear", jnp.float32, False), ("sequential", jnp.float64, True),
                                                     ("autodiff", jnp.float32, True), ("auto", jnp.float64, False)])
def test_sequential_values_grads_jvp_match_lax_scan(dtype, reverse, backward):
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        pytest.skip("x64 off")
    xs = _xs(dtype)
    W = (jax.random.normal(jax.random.PRNGKey(2), (D, D)) * 0.5).astype(dtype)

    def body(W, c, x):  # pytree carry with an integer counter, pytree ys
        h, n = c
        h = jnp.tanh(W @ h + x)
        return (h, n + 1), {"s": h.sum(), "p": h * x}

    c0 = (jnp.zeros(D, dtype), jnp.int32(0))

    def loss(scan, W, xs):
        (h, n), ys = scan(functools.partial(body, W), c0, xs, reverse=reverse)
        return jnp.sum(h ** 2) + jnp.sum(ys["s"]) + jnp.sum(ys["p"] ** 2)

    ap = functools.partial(autopar.scan, solver="sequential", backward=backward)
    rtol = 1e-4 if dtype == jnp.float32 else 1e-9
    _close(ap(functools.partial(body, W), c0, xs, reverse=reverse),
           jax.lax.scan(functools.partial(body, W), c0, xs, reverse=reverse), rtol=rtol, atol=rtol)
    _close(jax.grad(loss, argnums=(1, 2))(ap, W, xs), jax.grad(loss, argnums=(1, 2))(jax.lax.scan, W, xs),
           rtol=rtol, atol=rtol)
    t = (jnp.ones_like(W), jnp.ones_like(xs))
    _close(jax.jvp(lambda W, xs: loss(ap, W, xs), (W, xs), t), jax.jvp(lambda W, xs: loss(jax.lax.scan, W, xs), (W, xs), t),
           rtol=rtol, atol=rtol)


def test_xs_none_with_length_and_info():
    def f(c, _):
        return 0.9 * c + 1.0, c

    got, info = autopar.scan(f, jnp.zeros(2), None, length=5, return_info=True)
    _close(got, jax.lax.scan(f, jnp.zeros(2), None, length=5))
    assert bool(info.converged) and np.isfinite(float(info.residual))
    g = jax.grad(lambda c: autopar.scan(f, c, None, length=5)[1].sum())(jnp.ones(2))
    _close(g, jax.grad(lambda c: jax.lax.scan(f, c, None, length=5)[1].sum())(jnp.ones(2)))


def test_autodiff_backward_is_lax_scan_itself():
    """sequential + backward='autodiff' is literally lax.scan: its errors come with it."""
    def f(c, x):
        return jax.lax.fori_loop(0, jnp.int32(x), lambda i, a: a * 0.5, c), c

    xs = jnp.arange(3.0)
    jaxpr = jax.make_jaxpr(lambda c: autopar.scan(f, c, xs, solver="sequential", backward="autodiff"))(1.0)
    assert "scan[" in str(jaxpr)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.grad(lambda c: autopar.scan(f, c, xs, solver="sequential", backward="autodiff")[0])(1.0)


# ---- the cache -----------------------------------------------------------------------------------
@pytest.fixture
def traces(monkeypatch):
    """Counts how often autopar.scan traces a body (one per new body/signature)."""
    n = [0]
    real = api._ScanTrace.build.__func__

    def counting(cls, *a, **k):
        n[0] += 1
        return real(cls, *a, **k)

    monkeypatch.setattr(api._ScanTrace, "build", classmethod(counting))
    return n


def test_recreated_lambda_reuses_the_trace(traces):
    W = jnp.eye(D) * 0.5
    xs = _xs()
    for _ in range(4):
        out = autopar.scan(lambda c, x: (jnp.tanh(W @ c + x), c.sum()), jnp.zeros(D), xs)
    assert traces[0] == 1
    _close(out, jax.lax.scan(lambda c, x: (jnp.tanh(W @ c + x), c.sum()), jnp.zeros(D), xs))


def test_new_closure_values_are_new_traces_of_one_program(traces):
    """Same code, other captured arrays: a new trace (never a stale one), the same compiled program."""
    xs = _xs()

    def body_of(W):
        return lambda c, x: (W @ c + x, c)

    for s in (0.5, 0.25, 0.125):
        W = jnp.eye(D) * s
        got = autopar.scan(body_of(W), jnp.zeros(D), xs)
        _close(got, jax.lax.scan(body_of(W), jnp.zeros(D), xs))
    assert traces[0] == 3
    entry, _ = api._scan_entry(body_of(W), None, {})
    assert len(entry.programs) == 1
    assert next(iter(entry.programs.values())).jitted._cache_size() == 1


_G = {"a": 1.0}


def test_mutable_capture_is_keyed_by_the_function_object(traces):
    xs = _xs()
    for a in (1.0, 2.0):
        _G["a"] = a
        got = autopar.scan(lambda c, x: (c * _G["a"] + x, c), jnp.zeros(D), xs)
        _close(got, jax.lax.scan(lambda c, x: (c * _G["a"] + x, c), jnp.zeros(D), xs))
    assert traces[0] == 2  # a dict is not keyed by identity: each new lambda is traced


def test_cache_does_not_keep_a_loops_old_arrays():
    """A body re-created over new arrays each step (a training loop) leaves the old ones collectable
    (the analysis keeps the constants of the first one it analysed, as a parallelize object does)."""
    import weakref

    xs = _xs()

    def step(s):
        W = jnp.eye(D) * s
        autopar.scan(lambda c, x: (W @ c + x, c), jnp.zeros(D), xs)
        return weakref.ref(W)

    refs = [step(s) for s in (0.1, 0.2, 0.3)]
    gc.collect()
    assert refs[1]() is None and refs[2]() is None


def test_steady_state_eager_call_is_one_dispatch(traces, monkeypatch):
    """Re-created per call over the same arrays: no tracing, no analysis, one cached jitted program."""
    xs = _xs()
    W = jnp.eye(D) * 0.5

    def body():
        return lambda c, x: (jnp.tanh(W @ c + x), c)

    autopar.scan(body(), jnp.zeros(D), xs)
    entry, _ = api._scan_entry(body(), None, {})
    (tr,) = entry.programs.values()
    for name in ("_trace_body", "analyse"):
        monkeypatch.setattr(api, name, lambda *a, **k: pytest.fail("traced or analysed again"))
    for _ in range(3):
        got = autopar.scan(body(), jnp.zeros(D), xs)
    assert traces[0] == 1 and tr.jitted._cache_size() == 1
    _close(got, jax.lax.scan(body(), jnp.zeros(D), xs))


def test_sequential_one_pass_composes_hessian_and_vmap_grad():
    xs = _xs()

    def loss(scan, a, xs):
        carry, ys = scan(lambda c, x: (jnp.tanh(a * c + x), jnp.sin(c) * x), jnp.zeros(D), xs)
        return jnp.sum(carry ** 2) + jnp.sum(ys)

    a = jnp.linspace(0.2, 0.6, D)
    ap = functools.partial(autopar.scan, solver="sequential")
    _close(jax.hessian(loss, argnums=1)(ap, a, xs), jax.hessian(loss, argnums=1)(jax.lax.scan, a, xs),
           rtol=1e-4, atol=1e-5)
    batch = jnp.stack([xs, -xs])
    _close(jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, None, 0))(ap, a, batch),
           jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, None, 0))(jax.lax.scan, a, batch), rtol=1e-4, atol=1e-5)


def test_effect_only_in_y_or_nested_is_detected():
    calls = []

    @jax.jit
    def inner(x):
        jax.debug.callback(lambda t: calls.append(float(t)), x)
        return x

    def body(c, x):
        y = jax.lax.cond(x > 0, inner, lambda u: u, x)
        return 0.5 * c + x, y

    xs = jnp.arange(1.0, 6.0)
    rep = autopar.explain(body, 0.0, xs)
    assert "side effects (debug_callback)" in rep.plan.reason
    got = autopar.scan(body, 0.0, xs)
    assert calls == [1.0, 2.0, 3.0, 4.0, 5.0]
    _close(got, jax.lax.scan(body, 0.0, xs))


def test_bodies_over_different_lists_are_not_confused():
    """A captured container is identity, not value: two re-created bodies over two (equal, empty)
    lists that a callback appends to must each fill their own."""
    xs = _xs()
    firsts, seconds = [], []
    for sink in (firsts, seconds):
        def body(c, x, sink=sink):
            jax.debug.callback(lambda t: sink.append(float(t)), x[0])
            return 0.5 * c + x, c

        autopar.scan(body, jnp.zeros(D), xs)
    assert len(firsts) == T and len(seconds) == T


@pytest.mark.parametrize("reverse", [False, True])
def test_y_that_is_x_is_forwarded_not_copied(reverse):
    """``return c, x``: the y leaf is the x leaf itself, outside the compiled program (lax.scan's
    input-to-output forwarding; JAX's test_scan_input_to_output_forwarding), with values,
    gradients and tangents as lax.scan's, for pytrees mixing forwarded and computed y leaves."""
    def g(x):
        return autopar.scan(lambda c, x: (c + 1, x), 0, x)

    jaxpr = jax.make_jaxpr(g)(jnp.arange(3.0))
    assert len(jaxpr.eqns[0].params["jaxpr"].jaxpr.outvars) == 1, jaxpr

    def f(c, x):
        a, b = x
        return jnp.tanh(c + a), {"b": b, "t": c * a, "a": a}

    xs = (jnp.arange(5.0), jnp.ones((5, 2)))
    (_, ys), _ = autopar.scan(f, 0.3, xs, reverse=reverse, return_info=True)
    assert ys["b"] is xs[1] and ys["a"] is xs[0]

    def loss(scan):
        return lambda xs: sum(jnp.sum(l ** 2) for l in jax.tree_util.tree_leaves(scan(f, 0.3, xs, reverse=reverse)))

    np.testing.assert_allclose(loss(autopar.scan)(xs), loss(jax.lax.scan)(xs), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(autopar.scan))(xs)),
                    jax.tree_util.tree_leaves(jax.grad(loss(jax.lax.scan))(xs))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(loss(autopar.scan), (xs,), (xs,))[1],
                               jax.jvp(loss(jax.lax.scan), (xs,), (xs,))[1], rtol=1e-6)
    batched = jax.vmap(lambda xs: autopar.scan(f, 0.3, xs, reverse=reverse))(
        jax.tree_util.tree_map(lambda l: jnp.stack([l, 2 * l]), xs))
    want = jax.vmap(lambda xs: jax.lax.scan(f, 0.3, xs, reverse=reverse))(
        jax.tree_util.tree_map(lambda l: jnp.stack([l, 2 * l]), xs))
    for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_read_only_carry_stays_unbatched_under_vmap_of_cond():
    """An inner scan whose carry is read-only, under ``vmap(cond(batched pred), out_axes=None)``:
    the carry comes back as the input itself (outside autopar's program), so cond forwards it
    and the output is unbatched, as with lax.scan (flax#4709; JAX's
    test_scan_readonly_carry_optimization)."""
    def f(x, y):
        def g(_, y):
            return autopar.scan(lambda y, _: (y, None), y, None, length=1)[0]

        return jax.lax.cond(x < 0, g, g, x, y)

    assert float(jax.vmap(f, (0, None), None)(jnp.arange(3.0), 3.0)) == 3.0
    c, _ = autopar.scan(lambda c, x: (c, x), 0, jnp.arange(3.0))
    assert c == 0 and type(c) is type(jax.lax.scan(lambda c, x: (c, x), 0, jnp.arange(3.0))[0])


def test_effectful_body_is_lax_scan_in_the_callers_jaxpr():
    """Traced by the caller (make_jaxpr / jit / grad), an effectful body's scan is lax.scan itself,
    no program around it: its debug_print sits in the top-level scan equation (JAX's
    test_scan_diff_of_print), and it prints once per step."""
    def f(c, _):
        jax.debug.print("c = {c}", c=c, ordered=True)
        return c + 1, None

    def g(x):
        return autopar.scan(f, x, length=2)[0]

    jaxpr = jax.make_jaxpr(jax.value_and_grad(g))(1.0)
    assert "debug_print" in [e.primitive.name for e in jaxpr.eqns[0].params["jaxpr"].eqns], jaxpr
    assert float(jax.jit(g)(1.0)) == 3.0


@pytest.mark.parametrize("solver, backward", [("sequential", "auto"), ("auto", "auto"), ("deer", "auto"),
                                              ("sequential", "sequential"), ("deer", "linear")])
def test_while_loop_on_state_forward_mode_works_reverse_raises_like_lax_scan(solver, backward):
    """A fori_loop with traced bounds is a while_loop: JAX has no reverse mode for it. lax.scan's
    jvp/linearize work and its grad raises JAX's error; autopar's too (the adjoint's transpose is not
    traced into the tangent). Every backward raises: the cotangents of x and θ transpose the step's JVP."""
    xs = jnp.asarray([0.3, -0.2, 0.5, 0.1, -0.4], jnp.float32)

    def body(c, x):
        return jax.lax.fori_loop(x, x + 2.0, lambda i, c1: jnp.tanh(c1 * c + x), c), c * x

    def fn(scan):
        return lambda c0: scan(body, c0, xs)

    ap = functools.partial(autopar.scan, solver=solver, backward=backward)
    c0 = jnp.float32(0.7)
    _close(fn(ap)(c0), fn(jax.lax.scan)(c0), rtol=1e-5, atol=1e-6)
    _close(jax.jvp(fn(ap), (c0,), (jnp.float32(1.0),)), jax.jvp(fn(jax.lax.scan), (c0,), (jnp.float32(1.0),)),
           rtol=1e-4, atol=1e-5)
    lin_out, lin = jax.linearize(fn(ap), c0)
    _close(lin(jnp.float32(2.0)), jax.linearize(fn(jax.lax.scan), c0)[1](jnp.float32(2.0)), rtol=1e-4, atol=1e-5)
    loss = lambda scan: lambda c0: jnp.sum(fn(scan)(c0)[1]) + fn(scan)(c0)[0]  # noqa: E731
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.grad(loss(jax.lax.scan))(c0)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.grad(loss(ap))(c0)
    _close(jax.jacfwd(loss(ap))(c0), jax.jacfwd(loss(jax.lax.scan))(c0), rtol=1e-4, atol=1e-5)
