"""autopar.config: planner backend, default solver and backward, from override(), set() and env."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import config
from autopar.plan import make_plan

from .oracle import assert_trees_close, scan_states

W = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)) * 0.3, jnp.float32)


def cell(h, x):
    return jnp.tanh(h @ W + x)


def affine(h, x):
    return 0.9 * h + x


H0 = jnp.zeros(4, jnp.float32)
XS = jnp.asarray(np.random.default_rng(1).normal(size=(2000, 4)), jnp.float32)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for var in config.ENV.values():
        monkeypatch.delenv(var, raising=False)
    config.reset()
    yield
    config.reset()


def test_defaults():
    assert config.planner_backend() is None
    assert config.solver() == "auto" and config.backward() == "auto"
    assert config.resolve_backend() == jax.default_backend()
    assert config.resolve_backend("tpu") == "tpu"


def test_env_is_read_at_lookup(monkeypatch):
    monkeypatch.setenv("AUTOPAR_PLANNER_BACKEND", "GPU ")
    monkeypatch.setenv("AUTOPAR_SOLVER", "quasi-deer")
    monkeypatch.setenv("AUTOPAR_BACKWARD", "sequential")
    assert (config.planner_backend(), config.solver(), config.backward()) == ("gpu", "quasi-deer", "sequential")
    monkeypatch.setenv("AUTOPAR_PLANNER_BACKEND", "")
    assert config.planner_backend() is None


def test_precedence_override_set_env(monkeypatch):
    monkeypatch.setenv("AUTOPAR_PLANNER_BACKEND", "tpu")
    assert config.planner_backend() == "tpu"
    config.set(planner_backend="gpu")
    assert config.planner_backend() == "gpu"
    with config.override(planner_backend="cpu"):
        assert config.planner_backend() == "cpu"
        with config.override(planner_backend=None):  # JAX's default inside the block
            assert config.planner_backend() is None
        assert config.planner_backend() == "cpu"
    assert config.planner_backend() == "gpu"
    config.set(planner_backend=None)
    assert config.planner_backend() == "tpu"


@pytest.mark.parametrize("setting, value, allowed", [
    ("planner_backend", "gpx", "'gpu'"), ("solver", "newton", "'deer'"), ("backward", "reverse", "'linear'"),
    ("solver", 3, "'auto'"),
])
def test_validation_names_setting_value_and_allowed(setting, value, allowed):
    for ctx in (lambda: config.override(**{setting: value}).__enter__(), lambda: config.set(**{setting: value})):
        with pytest.raises(ValueError) as e:
            ctx()
        msg = str(e.value)
        assert f"autopar.config.{setting}" in msg and repr(value) in msg and allowed in msg, msg


@pytest.mark.parametrize("var, setting", [("AUTOPAR_PLANNER_BACKEND", "planner_backend"),
                                          ("AUTOPAR_SOLVER", "solver"), ("AUTOPAR_BACKWARD", "backward")])
def test_bad_env_value_names_the_variable(monkeypatch, var, setting):
    monkeypatch.setenv(var, "nonsense")
    with pytest.raises(ValueError, match=rf"autopar.config.{setting} \(from \${var}\).*'nonsense'"):
        getattr(config, setting)()


def test_unknown_setting():
    with pytest.raises(TypeError, match="unknown autopar.config setting 'backend'"):
        config.override(backend="gpu").__enter__()


def test_make_plan_uses_planner_backend_explicit_wins():
    fn = autopar.parallelize(cell)
    rep = fn.explain(H0, XS)
    with config.override(planner_backend="gpu"):
        assert make_plan(*_rec_facts(fn), backend="cpu").backend == "cpu"
        assert make_plan(*_rec_facts(fn)).backend == "gpu"
    assert rep.plan.backend == jax.default_backend()


def _rec_facts(fn):
    rec, facts, _ = fn._prepare(H0, XS)
    return rec, facts


def test_changed_setting_is_not_served_from_the_cache():
    """Plans and programs are cached per signature: the settings are part of the key."""
    fn = autopar.parallelize(cell)
    ref = scan_states(cell, H0, XS)
    _, i1 = fn(H0, XS, return_info=True)
    with config.override(planner_backend="gpu"):
        rep = fn.explain(H0, XS)
        assert rep.plan.backend == "gpu"
        hs, i2 = fn(H0, XS, return_info=True)
        assert i2.planned == rep.solver
    with config.override(solver="quasi-deer"):
        hs3, i3 = fn(H0, XS, return_info=True)
        assert i3.planned == "quasi-deer"
    _, i4 = fn(H0, XS, return_info=True)
    assert i4.planned == i1.planned
    for h in (hs, hs3):
        assert_trees_close(h, ref, rtol=1e-4)


def test_gpu_constants_pick_a_parallel_solver_for_a_long_nonlinear_cell():
    with config.override(planner_backend="gpu"):
        rep = autopar.parallelize(cell).explain(H0, XS)
    assert rep.solver != "sequential", str(rep)


def test_default_solver_and_backward_explicit_arguments_win():
    with config.override(solver="sequential", backward="sequential"):
        _, info = autopar.parallelize(affine)(H0, XS, return_info=True)
        assert (info.planned, info.backward) == ("sequential", "sequential")
        _, info = autopar.parallelize(affine, solver="linear", backward="linear")(H0, XS, return_info=True)
        assert (info.planned, info.backward) == ("linear", "linear")
        carry, _ = autopar.scan(lambda c, x: (affine(c, x), None), H0, XS)
        (_, _), info = autopar.scan(lambda c, x: (affine(c, x), None), H0, XS, return_info=True)
        assert info.planned == "sequential"
        assert autopar.explain(lambda c, x: (affine(c, x), None), H0, XS).solver == "sequential"


def test_default_solver_from_env(monkeypatch):
    monkeypatch.setenv("AUTOPAR_SOLVER", "linear")
    _, info = autopar.parallelize(affine)(H0, XS[:5], return_info=True)
    assert info.planned == "linear"


def test_default_that_does_not_apply_says_where_it_came_from():
    with config.override(solver="linear"):
        with pytest.raises(ValueError, match=r"does not apply.*came from autopar.config"):
            autopar.parallelize(cell)(H0, XS[:5])


def test_override_is_per_thread():
    import threading

    seen = []
    with config.override(planner_backend="gpu"):
        t = threading.Thread(target=lambda: seen.append(config.planner_backend()))
        t.start()
        t.join()
    assert seen == [None]


def test_exported():
    assert autopar.config is config
    assert config.snapshot() == (("backward", "auto"), ("planner_backend", None), ("solver", "auto"))
