"""explain()'s text: one-line patterns, a reason per candidate, consistent JVP counts,
the cell's name, user-pass facts, and the notebook view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar.passes import Pass
from autopar.report import render_pattern_tiled, summarize_pattern


@pytest.mark.parametrize("pattern, expected", [
    (np.eye(64, dtype=bool), "diagonal (64)"),
    (np.ones((16, 16), bool), "dense (16 × 16)"),
    (np.zeros((5, 5), bool), "zero (the new state does not read the state)"),
    (np.kron(np.eye(4), np.ones((16, 16))).astype(bool), "4 blocks of 16"),
    (np.diag([True, False, True]), "diagonal (2 of 3 entries; the others do not read the state)"),
])
def test_simple_patterns_are_one_line(pattern, expected):
    assert summarize_pattern(pattern) == expected


def test_permuted_and_uneven_blocks():
    P = np.kron(np.eye(4), np.ones((2, 2))).astype(bool)
    perm = np.random.default_rng(0).permutation(8)
    assert summarize_pattern(P[np.ix_(perm, perm)]) == "4 blocks of 2 (permuted)"
    Q = np.zeros((5, 5), bool)
    Q[:2, :2] = Q[2:, 2:] = True
    assert summarize_pattern(Q) == "2 blocks of sizes 2, 3"


def test_informative_pattern_is_drawn_small():
    tri = np.eye(40, dtype=bool) | np.eye(40, k=1, dtype=bool) | np.eye(40, k=-1, dtype=bool)
    assert summarize_pattern(tri) is None
    pic, k = render_pattern_tiled(tri, 16)
    assert k == 3 and len(pic.splitlines()) == 14 and set(pic) <= set("#+.\n")


def _report(cell, h0, T=16, din=None, **kw):
    xs = jax.random.normal(jax.random.PRNGKey(0), (T, din or h0.shape[-1]))
    return autopar.parallelize(cell, **kw).explain(h0, xs)


def test_diagonal_cell_report_is_short_and_named():
    a = jnp.linspace(0.1, 0.9, 64)

    def my_ssm(h, x):
        return a * h + x

    rep = _report(my_ssm, jnp.zeros(64))
    text = str(rep)
    assert text.startswith("autopar report for 'test_diagonal_cell_report_is_short_and_named.my_ssm'")
    assert "sparsity pattern: diagonal (64)" in text
    assert len(text.splitlines()) < 25, text
    assert _report(my_ssm, jnp.zeros(64), name="ssm").name == "ssm"


def test_every_newton_candidate_has_its_own_reason():
    W = jax.random.normal(jax.random.PRNGKey(1), (8, 8)) / 3

    def gru_like(h, x):
        return jnp.tanh(h @ W + x)

    rep = _report(gru_like, jnp.zeros(8))
    rows = {line[2:].split()[0]: line for line in str(rep).splitlines() if line[:2] in ("  ", "* ") and line[2:3] != " "}
    reasons = {s: rows[s].split("  ")[-1] for s in ("deer", "quasi-deer", "elk", "quasi-elk")}
    assert len(set(reasons.values())) == 4, reasons
    assert "unstable" in reasons["elk"] and "diag(J)" in reasons["quasi-deer"]


def test_deltanet_jvp_count_is_consistent():
    """The headline and every note agree on the JVPs of the final (kronecker) structure."""
    dk = dv = 8
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    Wk, Wv, wb = jax.random.normal(k1, (4, dk)), jax.random.normal(k2, (4, dv)), jax.random.normal(k3, (4,))

    def deltanet(S, x):
        k = x @ Wk
        k = k / jnp.linalg.norm(k)
        beta = jax.nn.sigmoid(x @ wb)
        return S - beta * jnp.outer(k, k @ S) + beta * jnp.outer(k, x @ Wv)

    rep = _report(deltanet, jnp.zeros((dk, dv)), din=4)
    text = str(rep)
    assert rep.structure.kind.startswith("kronecker")
    assert f"(extraction: {rep.structure.n_jvps} JVP per step" in text
    assert "block-diagonal structure uses" not in text
    assert "blocks of 8 (permuted)" in text


def test_user_pass_facts_are_printed():
    class Bandwidth(Pass):
        name = "test-bandwidth"
        requires = ("sparsity",)
        provides = ("test_bandwidth",)

        def run(self, rec, facts):
            i, j = np.nonzero(facts["sparsity"])
            return {"test_bandwidth": int(np.max(np.abs(i - j))) if len(i) else 0}

    autopar.passes.register(Bandwidth)
    try:
        text = str(_report(lambda h, x: jnp.tanh(h + jnp.roll(h, 1) + x), jnp.zeros(6)))
    finally:
        autopar.passes.unregister("test-bandwidth")
    assert "fact test_bandwidth: 5  (from a user pass)" in text


def test_notebook_view_draws_the_full_pattern():
    rep = _report(lambda h, x: jnp.tanh(h + jnp.roll(h, 1) + x), jnp.zeros(40))
    html = rep._repr_html_()
    assert html.startswith("<pre>autopar report") and html.count("<rect") == int(rep.sparsity.sum())
    assert len(rep.pattern().splitlines()) == 40 and len(rep.pattern(max_rows=10).splitlines()) == 10


def test_explain_measure_shows_measured_next_to_predicted(monkeypatch):
    """explain(measure=True) runs each applicable candidate (the program solver=<name> runs) and
    the table gains a measured column; the plan itself is the same as without measuring."""
    from autopar import measure

    a = jnp.linspace(0.5, 0.9, 4)
    f = autopar.parallelize(lambda h, x: a * h + x, name="decay")
    h0, xs = jnp.zeros(4), jnp.ones((16, 4))
    plain = f.explain(h0, xs)
    pred = {c.solver: c.time for c in plain.candidates if c.applies}
    ratio = 1.01 * max(pred["linear"], pred["sequential"]) / pred[plain.solver]
    monkeypatch.setattr(measure, "SKIP_ABOVE", 0.0)  # keep the test fast: time sequential and linear only
    monkeypatch.setattr(measure, "MAX_PREDICTED_RATIO", ratio)
    assert plain.measured is None and "measured" not in str(plain)
    r = f.explain(h0, xs, measure=2)
    assert r.solver == plain.solver
    timed = {k: v for k, v in r.measured.items() if isinstance(v, float)}
    assert r.solver in timed and "linear" in timed  # every cheap candidate is timed
    assert all(v > 0 for v in timed.values())
    chosen = next(c for c in r.candidates if c.chosen)
    for c in r.candidates:  # the rest are skipped, and say why
        if c.applies and c.solver not in timed:
            assert c.time > ratio * chosen.time and "not run" in r.measured[c.solver]
    assert set(r.measured) <= {c.solver for c in r.candidates if c.applies}
    text = str(r)
    assert "measured" in text and "meas/pred" in text and "fastest" in text
    for row in text.splitlines():
        if row.lstrip("* ").startswith("linear "):
            assert "µs" in row or "ms" in row


def test_explain_measure_refuses_tracers_and_bad_repeats():
    f = autopar.parallelize(lambda h, x: 0.5 * h + x)
    h0, xs = jnp.zeros(2), jnp.ones((8, 2))
    with pytest.raises(ValueError, match="repeats"):
        f.explain(h0, xs, measure=0)

    @jax.jit
    def inside(xs):
        return f.explain(h0, xs, measure=True)

    with pytest.raises(RuntimeError, match="eagerly"):
        inside(xs)
