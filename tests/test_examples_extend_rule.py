"""examples/custom_rule.py: a custom primitive gets a rule (one row) and the analysis uses it."""

import runpy
from pathlib import Path

import numpy as np
import pytest

import autopar

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_custom_rule_example():
    ns = runpy.run_path(str(ROOT / "examples" / "custom_rule.py"))
    before, report, hs, ref = ns["main"]()
    # without a row the primitive is conservative: dense, nonlinear, named in the report
    assert before.conservative == ["pairswap"] and before.structure.kind == "dense"
    assert before.degree == "nonlinear" and before.solver != "linear"
    # with the rule: affine, J = P·diag(a) with P the pair swap, the exact linear solver; the report shows it
    assert report.conservative == [] and report.linear and report.solver == "linear"
    assert report.structure.kind == "monomial" and report.structure.n_jvps == 1
    assert "handled conservatively (no rule; assumed dense): pairswap" in str(before)
    assert "handled conservatively" not in str(report) and "solver: linear" in str(report)
    np.testing.assert_allclose(hs, ref, rtol=1e-5, atol=1e-6)
    assert "pairswap" not in autopar.passes.registered_rules()  # the example cleans up
