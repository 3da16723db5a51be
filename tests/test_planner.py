"""The planner: applicability, the cost model's choices, the memory budget, the calibration cache."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import costs, plan as plan_mod, trace
from autopar.passes import analyse
from autopar.solvers import NewtonSolver, Prediction, Solver, base as solvers_base, register_solver, solver_names
from tests.oracle import assert_trees_close, scan_states


@pytest.fixture(autouse=True)
def _isolated_constants(tmp_path, monkeypatch):
    """Every test plans with the built-in defaults and a private, empty calibration cache."""
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "cache"))
    costs.clear_constants()
    yield
    costs.clear_constants()


def _analysed(cell, h0, xs):
    rec = trace.trace_cell(cell, h0, xs)
    return rec, analyse(rec)


def diag_affine(D=16, T=4096, dtype=jnp.float32):
    a = jnp.linspace(0.5, 0.99, D).astype(dtype)
    xs = jnp.ones((T, D), dtype)
    return (lambda h, x: a * h + x), jnp.zeros(D, dtype), xs


def tanh_dense(D=8, T=64):
    W = jnp.asarray(np.random.default_rng(0).standard_normal((D, D)) / np.sqrt(D), jnp.float32)
    return (lambda h, x: jnp.tanh(h @ W + x)), jnp.zeros(D, jnp.float32), jnp.ones((T, D), jnp.float32)


# ---- forced solvers -------------------------------------------------------------------
def test_forced_solver_that_does_not_apply_raises_clearly():
    cell, h0, xs = tanh_dense()
    rec, facts = _analysed(cell, h0, xs)
    with pytest.raises(ValueError, match=r"solver='linear' does not apply.*not affine.*solver='auto'"):
        plan_mod.make_plan(rec, facts, "linear")
    with pytest.raises(ValueError, match="does not apply"):
        autopar.parallelize(cell, solver="linear")(h0, xs)


def test_unknown_solver_names_the_available_ones():
    cell, h0, xs = diag_affine(T=8)
    rec, facts = _analysed(cell, h0, xs)
    with pytest.raises(ValueError, match=r"unknown solver 'nope'.*Available: auto, "):
        plan_mod.make_plan(rec, facts, "nope")


def test_forced_solver_is_used_and_matches_scan():
    cell, h0, xs = diag_affine(D=4, T=33, dtype=jnp.float64)
    xs = xs * jnp.arange(33.0)[:, None]
    for name in ("linear", "sequential"):
        fn = autopar.parallelize(cell, solver=name)
        assert fn.explain(h0, xs).solver == name
        assert fn.explain(h0, xs).plan.forced
        assert_trees_close(fn(h0, xs), scan_states(cell, h0, xs))


# ---- auto never picks what does not apply -----------------------------------------------
class _CheapButNeverApplies(Solver):
    name = "test-never"

    def applies(self, facts, rec):
        return False, "test solver that never applies"

    def predict_cost(self, facts, rec, K):
        return 0.0, 0.0, 1.0


class _CheapButHuge(Solver):
    name = "test-huge"

    def applies(self, facts, rec):
        return True, "test solver: free but enormous"

    def predict_cost(self, facts, rec, K):
        return 0.0, 1e30, 1.0


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("which", ["affine", "dense", "complex-mixed"])
def test_auto_never_picks_a_solver_that_does_not_apply(monkeypatch, backend, which):
    monkeypatch.setitem(solvers_base._SOLVERS, "test-never", _CheapButNeverApplies())
    if which == "affine":
        cell, h0, xs = diag_affine(T=1 << 16)
    elif which == "dense":
        cell, h0, xs = tanh_dense(T=1 << 16)
    else:  # real and complex leaves together: parallel solvers decline
        cell = lambda h, x: (0.5 * h[0] + x, 0.5j * h[1] + x)  # noqa: E731
        h0, xs = (jnp.zeros(3, jnp.float32), jnp.zeros(3, jnp.complex64)), jnp.ones((1 << 16, 3), jnp.float32)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend=backend)
    chosen = [c for c in p.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].solver == p.solver
    assert chosen[0].applies, p.candidates
    assert p.solver != "test-never"
    if which == "complex-mixed" or (which == "dense" and backend == "cpu"):
        assert p.solver == "sequential"


# ---- the cost model's choices ------------------------------------------------------------
def test_gpu_constants_pick_linear_for_a_long_diagonal_affine_cell():
    cell, h0, xs = diag_affine(T=1 << 16)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend="gpu")
    assert p.solver == "linear", p.reason
    assert p.backward == "linear"
    rows = {c.solver: c for c in p.candidates}
    assert rows["linear"].time < rows["sequential"].time / 10  # a launch per step vs log-depth
    assert rows["linear"].depth < rows["sequential"].depth


def test_cpu_constants_keep_a_cheap_cell_sequential():
    """Measured on the 2-core CPU: lax.scan of h ← a·h + x (D = 16) is ~2× faster than any scan."""
    cell, h0, xs = diag_affine(T=1 << 16)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend="cpu")
    assert p.solver == "sequential", p.reason
    assert "predicted fastest on cpu" in p.reason


def test_predictions_grow_with_T_and_depth_is_logarithmic():
    def rows(T):
        cell, h0, xs = diag_affine(T=T)
        rec, facts = _analysed(cell, h0, xs)
        return {c.solver: c for c in plan_mod.make_plan(rec, facts, backend="gpu").candidates}

    short, long = rows(1 << 10), rows(1 << 16)
    for name in ("sequential", "linear"):
        assert long[name].time > short[name].time
        assert long[name].memory == pytest.approx(64 * short[name].memory)
    assert long["sequential"].depth == 1 << 16
    assert long["linear"].depth == plan_mod.levels(1 << 16) == 32


def test_newton_family_prediction_scales_with_predicted_iterations(monkeypatch):
    class FakeNewton(NewtonSolver):
        name = "test-newton"
        n = 3.0

        def applies(self, facts, rec):
            return True, "fake"

        def predict_iterations(self, facts, rec):
            return self.n

    s = FakeNewton()
    monkeypatch.setitem(solvers_base._SOLVERS, "test-newton", s)
    cell, h0, xs = tanh_dense(T=1024)
    rec, facts = _analysed(cell, h0, xs)
    K = costs.constants_for("gpu")
    t3 = plan_mod.predict("test-newton", facts, rec, K)
    s.n = 6.0
    t6 = plan_mod.predict("test-newton", facts, rec, K)
    assert t3.iterations == 3.0 and t6.iterations == 6.0
    assert t6.time - K.parallel_overhead == pytest.approx(2 * (t3.time - K.parallel_overhead))
    row = next(c for c in plan_mod.make_plan(rec, facts, backend="gpu").candidates if c.solver == "test-newton")
    assert row.iterations == 6.0


def test_a_solver_is_priced_by_its_own_cost_or_refused(monkeypatch):
    """A registered solver is never silently priced as a Newton solver: it brings ``cost()`` (or the
    older ``predict_cost``), subclasses ``NewtonSolver``, or registration says what is missing."""

    class Unpriced(Solver):
        name = "test-unpriced"

        def applies(self, facts, rec):
            return True, "applies"

        def predict_iterations(self, facts, rec):  # not a price: Newton's model is opt-in
            return 2.0

    with pytest.raises(TypeError, match=r"'test-unpriced' defines no cost.*Adding a solver.*NewtonSolver"):
        register_solver(Unpriced)
    assert "test-unpriced" not in solver_names()

    class Priced(Unpriced):
        name = "test-priced"
        exact = True

        def cost(self, facts, rec, K):
            return Prediction(1e-9, 8.0, 1.0, 3.0, 2.0)

    monkeypatch.setattr(solvers_base, "_SOLVERS", solvers_base._SOLVERS.copy())
    register_solver(Priced)
    cell, h0, xs = tanh_dense(T=64)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend="cpu")
    row = next(c for c in p.candidates if c.solver == "test-priced")
    assert (row.time, row.memory, row.iterations, row.work, row.depth) == (1e-9, 8.0, 1.0, 3.0, 2.0)
    assert p.solver == "test-priced" and row.chosen
    # exact solvers may be differentiated by JAX itself
    q = plan_mod.make_plan(rec, facts, "test-priced", options={"backward": "autodiff"})
    assert q.backward == "autodiff"
    with pytest.raises(ValueError, match=r"backward='autodiff' cannot be used.*only exact for \['linear', 'sequential', 'test-priced'\]"):
        plan_mod.make_plan(rec, facts, "deer", options={"backward": "autodiff"})


def test_backward_choice_and_override():
    cell, h0, xs = diag_affine(T=1 << 16)
    rec, facts = _analysed(cell, h0, xs)
    assert plan_mod.make_plan(rec, facts, backend="gpu").backward == "linear"
    p = plan_mod.make_plan(rec, facts, backend="gpu", options={"backward": "sequential"})
    assert p.backward == "sequential" and "forced" in p.backward_reason
    with pytest.raises(ValueError, match="`backward` must be"):
        plan_mod.make_plan(rec, facts, options={"backward": "sideways"})


# ---- memory budget ------------------------------------------------------------------------
def test_memory_budget_excludes_solvers_that_do_not_fit():
    cell, h0, xs = diag_affine(T=1 << 16)
    rec, facts = _analysed(cell, h0, xs)
    rows = {c.solver: c for c in plan_mod.make_plan(rec, facts, backend="gpu").candidates}
    budget = (rows["sequential"].memory + rows["linear"].memory) / 2  # sequential fits, linear does not
    assert rows["sequential"].memory < budget < rows["linear"].memory
    p = plan_mod.make_plan(rec, facts, backend="gpu", options={"memory_budget": budget})
    assert p.solver == "sequential"
    assert p.backward == "sequential"  # the linear adjoint does not fit either
    lin = next(c for c in p.candidates if c.solver == "linear")
    assert not lin.within_budget and "exceeds memory_budget" in lin.reason
    for c in p.candidates:
        if c.chosen:
            assert c.memory <= budget


def test_memory_budget_beats_a_free_but_huge_solver(monkeypatch):
    monkeypatch.setitem(solvers_base._SOLVERS, "test-huge", _CheapButHuge())
    cell, h0, xs = diag_affine(T=256)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts)  # default budget: a fraction of RAM, far below 1e30 B
    assert p.solver != "test-huge"
    assert math.isfinite(p.memory_budget) and p.memory_budget > 0
    with pytest.warns(UserWarning, match="more than memory_budget"):
        q = plan_mod.make_plan(rec, facts, "test-huge")
    assert q.solver == "test-huge" and q.forced


def test_memory_budget_validation():
    cell, h0, xs = diag_affine(T=8)
    with pytest.raises(ValueError, match="`memory_budget` must be a positive number"):
        autopar.parallelize(cell, memory_budget=-1)(h0, xs)


def test_nothing_fits_picks_least_memory():
    cell, h0, xs = diag_affine(T=1024)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend="gpu", options={"memory_budget": 1})
    assert p.solver == "sequential" and "no solver fits" in p.reason


# ---- the candidate table -------------------------------------------------------------------
def test_candidate_table_is_complete():
    cell, h0, xs = diag_affine(T=512)
    rep = autopar.parallelize(cell).explain(h0, xs)
    names = [c.solver for c in rep.candidates]
    assert names == solver_names()
    assert sum(c.chosen for c in rep.candidates) == 1
    for c in rep.candidates:
        assert c.reason
        if c.applies:
            assert math.isfinite(c.time) and c.time > 0 and math.isfinite(c.memory) and c.iterations >= 1
            assert math.isfinite(c.work) and c.depth >= 1
        else:
            assert math.isnan(c.time)
    text = str(rep)
    for n in names:
        assert n in text
    assert "backward" in text and "constants" in text


# ---- calibration and its cache -------------------------------------------------------------
def test_cache_roundtrip_and_priority(tmp_path):
    K = costs.DEFAULTS["cpu"].replace(step_overhead=1.0, source="calibrated test")
    path = costs.save_cached("cpu", K)
    assert path == tmp_path / "cache" / "constants.json"
    data = json.loads(path.read_text())
    assert costs.device_key("cpu") in data
    costs.clear_constants()
    assert costs.constants_for("cpu") == K
    # a set_constants override beats the cache
    costs.set_constants("cpu", costs.DEFAULTS["cpu"])
    assert costs.constants_for("cpu") == costs.DEFAULTS["cpu"]
    costs.clear_constants()
    # the plan reads the cache: a 1 s loop overhead makes sequential hopeless on cpu
    cell, h0, xs = diag_affine(T=1 << 12)
    rec, facts = _analysed(cell, h0, xs)
    p = plan_mod.make_plan(rec, facts, backend="cpu")
    assert p.constants == K and p.solver == "linear"


def test_broken_cache_falls_back_to_defaults(tmp_path):
    path = costs.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert costs.constants_for("cpu") == costs.DEFAULTS["cpu"]
    path.write_text(json.dumps({costs.device_key("cpu"): {"bogus": 1}}))
    costs.clear_constants()
    assert costs.constants_for("cpu") == costs.DEFAULTS["cpu"]


def test_no_cache_means_defaults_and_nothing_is_written():
    cell, h0, xs = diag_affine(T=64)
    autopar.parallelize(cell)(h0, xs)
    assert costs.constants_for("cpu") == costs.DEFAULTS["cpu"]
    assert not costs.cache_path().exists()  # planning never calibrates


def test_calibrate_writes_and_the_planner_reads(monkeypatch):
    K = autopar.calibrate(repeats=1)
    for f in ("step_overhead", "seq_flops", "par_flops", "level_overhead", "bytes_per_s", "scan_elem_time"):
        v = getattr(K, f)
        assert math.isfinite(v) and v > 0, (f, v)
    assert K.source.startswith("calibrated")
    data = json.loads(costs.cache_path().read_text())
    assert costs.BackendConstants.from_json(data[costs.device_key("cpu")]) == K
    costs.clear_constants()
    assert costs.constants_for("cpu") == K
    cell, h0, xs = diag_affine(T=64)
    assert autopar.parallelize(cell).explain(h0, xs).plan.constants == K


def test_calibrate_refuses_to_run_inside_jit():
    with pytest.raises(RuntimeError, match="inside a traced function"):
        jax.jit(lambda x: (autopar.calibrate(save=False), x)[1])(1.0)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOPAR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert costs.cache_dir() == tmp_path / "xdg" / "autopar"


# ---- step cost facts ---------------------------------------------------------------------
def test_step_flops_and_ops():
    W = jnp.ones((16, 16), jnp.float32)
    jp = jax.make_jaxpr(lambda h: jnp.tanh(h @ W))(jnp.ones(16, jnp.float32))
    assert costs.step_flops(jp) == 2 * 16 * 16 + costs.TRANSCENDENTAL_FLOPS * 16
    assert costs.step_ops(jp) == (1.0, 0.0)
    tiny = jax.make_jaxpr(lambda h: h @ jnp.ones((4, 4), jnp.float32))(jnp.ones(4, jnp.float32))
    assert costs.step_ops(tiny) == (0.0, 0.0)  # fused by XLA: no per-op overhead
    cp = jax.make_jaxpr(lambda h: h @ W.astype(jnp.complex64))(jnp.ones(16, jnp.complex64))
    assert costs.step_ops(cp) == (0.0, 1.0)


def test_sequential_price_reads_the_step_ops_fact_when_present():
    """The planner prices non-fusable ops from ``facts["step_ops"]`` (the cost pass's count) and
    counts them off the step's jaxpr only when the analysis did not provide it."""
    cell, h0, xs = tanh_dense(D=16, T=256)
    rec, facts = _analysed(cell, h0, xs)
    K = costs.constants_for("cpu")
    counted = costs.step_ops(rec.step_jaxpr)
    base = {k: v for k, v in facts.items() if k != "step_ops"}
    absent = plan_mod.predict("sequential", base, rec, K)
    same = plan_mod.predict("sequential", dict(base, step_ops=counted), rec, K)
    more = plan_mod.predict("sequential", dict(base, step_ops=(counted[0] + 10, counted[1])), rec, K)
    assert absent == same
    assert more.time == pytest.approx(absent.time + rec.length * 10 * K.op_overhead)


def test_planning_inside_jit_with_traced_closed_over_params():
    """The planner reads only shapes and dtypes: closed-over tracers must not be concretised."""
    xs = jnp.ones((64, 4), jnp.float32)
    h0 = jnp.zeros(4, jnp.float32)

    @jax.jit
    def loss(a):
        cell = autopar.parallelize(lambda h, x: a * h + x)
        return jnp.sum(cell(h0, xs))

    a = jnp.full(4, 0.9, jnp.float32)
    g = jax.grad(loss)(a)
    ref = jax.grad(lambda a: jnp.sum(scan_states(lambda h, x: a * h + x, h0, xs)))(a)
    assert_trees_close(g, ref, rtol=1e-4)


def test_state_vjp_prices_the_sequential_adjoint():
    """The sequential adjoint's loop body is the step's VJP w.r.t. the state only (the cotangents
    of x and θ are one vmapped VJP outside it), priced like a forward step. Measured on the 2-core
    CPU at T = 65536 (gradient, auto's forward): DeltaNet (d = 4) sequential adjoint 22.9 ms vs
    linear 59.5 ms; a diagonal SSM whose input goes through a 256 × 256 matmul, 302 ms vs 359 ms —
    the old per-equation price of the whole VJP (x's matmul counted in the loop) chose linear for both."""
    import numpy as np

    from autopar.passes import analyse
    from autopar.trace import trace_cell

    d = 4
    rng = np.random.default_rng(0)
    Wk, Wv = (jnp.asarray(rng.standard_normal((d, d)), jnp.float32) for _ in range(2))

    def deltanet(S, x):
        k = x @ Wk
        k = k / (jnp.linalg.norm(k) + 1e-6)
        beta = jax.nn.sigmoid(x.sum())
        return S - beta * jnp.outer(S @ k - x @ Wv, k)

    B = jnp.asarray(rng.standard_normal((256, 256)) / 16, jnp.float32)
    a = jnp.linspace(0.5, 0.99, 256, dtype=jnp.float32)

    def ssm(h, x):
        return a * h + x @ B

    for cell, h0, D in [(deltanet, jnp.zeros((d, d), jnp.float32), d), (ssm, jnp.zeros(256, jnp.float32), 256)]:
        rec = trace_cell(cell, h0, jnp.ones((65536, D), jnp.float32))
        facts = analyse(rec)
        assert 0 < facts["vjp_eqns"] and facts["vjp_flops"] <= 2 * facts["step_flops"]
        plan = plan_mod.make_plan(rec, facts, backend="cpu")
        assert plan.backward == "sequential", plan.backward_reason
    # x's matmul is not in the loop: the state-VJP of the SSM is one multiply, no kernel
    assert facts["vjp_ops"] == (0.0, 0.0) and facts["vjp_flops"] < 0.01 * facts["step_flops"]


def test_row_ops_counts_the_passes_a_vmapped_step_runs():
    """``costs.row_ops``: equations with arithmetic (layout-only ones fold into their neighbours);
    with ``n_state``, only those that read the state (what a tangent carries)."""
    W = jnp.ones((4, 4), jnp.float32)

    def cell(h, x):
        g = (x @ W).reshape(4)  # reads no state: not in a tangent
        return jnp.tanh(h * g + 1.0).reshape(2, 2).reshape(4)

    jp = jax.make_jaxpr(cell)(jnp.ones(4, jnp.float32), jnp.ones(4, jnp.float32))
    assert costs.row_ops(jp) == 4  # dot, mul, add, tanh
    assert costs.row_ops(jp, n_state=1) == 3  # mul, add, tanh


def test_narrow_vmapped_passes_are_priced_per_row():
    """Every vectorised pass over the step pays ``row_op_time`` per equation per time step, a
    tangent's equations once per JVP (batched tangents are T·n rows): a 4 × 4 dense GRU's linear
    adjoint (4 JVPs) then prices above its sequential one, as measured on the 2-core CPU at
    T = 4096 (backward alone, min of 15: sequential 0.69 ms, linear 1.18 ms); without the term
    the linear adjoint was priced at half the sequential one and chosen. GPU constants have no
    such term."""
    from benchmarks.cells import make_cell

    cell, h0, xs_fn, _ = make_cell("dense-gru-4", 4)
    rec, facts = _analysed(cell, h0, xs_fn(4096))
    assert facts["row_ops"] > facts["tangent_row_ops"] > 0
    K = costs.constants_for("cpu")
    assert K.row_op_time > 0 and costs.constants_for("gpu").row_op_time == 0
    from autopar.adjoint import get_adjoint

    lin, seq = (get_adjoint(n).cost(facts, rec, K).time for n in ("linear", "sequential"))
    lin0, seq0 = (get_adjoint(n).cost(facts, rec, K.replace(row_op_time=0.0)).time for n in ("linear", "sequential"))
    n_jvps = facts["structure"].n_jvps
    rows_lin = facts["row_ops"] + n_jvps * facts["tangent_row_ops"] + 2 * facts["row_ops"]
    assert lin - lin0 == pytest.approx(rec.length * rows_lin * K.row_op_time)
    assert seq - seq0 == pytest.approx(rec.length * 2 * facts["row_ops"] * K.row_op_time)
    assert lin0 < seq0 and lin > seq
    assert plan_mod.make_plan(rec, facts, backend="cpu").backward == "sequential"


# ---- XLA:CPU loop modes and the scan's per-row cost ---------------------------------------
def _compiled_as_one_kernel(cell, h0, xs) -> bool:
    """Whether XLA:CPU compiled autopar's forced sequential loop into one kernel (its small-while-
    loop pass tags such a loop ``xla_cpu_small_call``)."""
    fn = autopar.parallelize(cell, solver="sequential")
    return "xla_cpu_small_call" in jax.jit(lambda h, x: fn(h, x)).lower(h0, xs).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's loop modes")
def test_loop_body_bytes_tell_the_loop_mode_xla_cpu_compiles():
    """``costs.loop_runs_as_thunks`` against what XLA:CPU actually compiled, on loops on both
    sides of its small-loop threshold: a·h + x at D = 16 and 32 (one kernel) and 64, 256 (thunks),
    the multi-axis (2, 8, 4) cell and a dense GRU D = 64 (thunks), a D = 2 SSM (one kernel)."""
    from benchmarks.cells import make_cell

    T = 16
    cases = {f"a*h+x D={D}": diag_affine(D=D, T=T) for D in (16, 32, 64, 256)}
    for name in ("multi-axis", "dense-gru-64", "diag-ssm-2"):
        cell, h0, xs_fn, _ = make_cell(name, 16)
        cases[name] = (cell, h0, xs_fn(T))
    K = costs.constants_for("cpu")
    if not _compiled_as_one_kernel(*cases["a*h+x D=16"]):
        pytest.skip("this XLA:CPU compiles no loop into one kernel (no small-while-loop pass)")
    for name, (cell, h0, xs) in cases.items():
        rec, facts = _analysed(cell, h0, xs)
        predicted = costs.loop_runs_as_thunks(K, facts["loop_body_bytes"])
        assert predicted == (not _compiled_as_one_kernel(cell, h0, xs)), (name, facts["loop_body_bytes"])


def test_a_thunk_driven_loop_pays_loop_thunk_time_per_step():
    """The sequential price carries ``loop_thunk_time`` a step exactly when the loop body is past
    ``loop_kernel_bytes``; GPU constants have no such mode."""
    seq = solvers_base.get_solver("sequential")
    K = costs.constants_for("cpu")
    assert K.loop_thunk_time > 0 and K.loop_kernel_bytes > 0
    assert costs.loop_kernel_bytes(costs.constants_for("gpu")) is None
    for D, thunks in ((16, False), (64, True)):
        rec, facts = _analysed(*diag_affine(D=D, T=256))
        diff = seq.cost(facts, rec, K).time - seq.cost(facts, rec, K.replace(loop_thunk_time=0.0)).time
        assert diff == pytest.approx(256 * K.loop_thunk_time if thunks else 0.0, abs=1e-15), D


def test_xla_flags_move_the_small_loop_threshold(monkeypatch):
    K = costs.constants_for("cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert costs.loop_kernel_bytes(K) == K.loop_kernel_bytes
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                       "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=100000")
    assert costs.loop_kernel_bytes(K) == 100000
    assert not costs.loop_runs_as_thunks(K, 50000)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0")
    assert costs.loop_runs_as_thunks(K, 1.0)  # 0 turns the pass off: every loop runs as thunks


def test_the_scan_pays_scan_row_time_per_step():
    from autopar.solvers import pricing
    from autopar.structure import Diagonal

    K = costs.constants_for("cpu")
    st = Diagonal(16)
    t, _ = pricing.scan(4096, 16, st, 4, 1.0, K)
    t0, _ = pricing.scan(4096, 16, st, 4, 1.0, K.replace(scan_row_time=0.0))
    assert t - t0 == pytest.approx(4096 * K.scan_row_time)
    assert costs.constants_for("gpu").scan_row_time == 0


def test_loop_body_bytes_see_through_calls():
    """A step whose work sits in a call (``jax.jit`` inside the cell) touches the same bytes."""
    a = jnp.linspace(0.5, 0.99, 64, dtype=jnp.float32)
    h0, xs = jnp.zeros(64, jnp.float32), jnp.ones((8, 64), jnp.float32)
    plain = _analysed(lambda h, x: a * h + x, h0, xs)[1]["loop_body_bytes"]
    called = _analysed(lambda h, x: jax.jit(lambda h, x: a * h + x)(h, x), h0, xs)[1]["loop_body_bytes"]
    assert plain == called == (64 + 64 + 64 + 4 * 64) * 4  # h, x_t, the constant a, the state out ×4
