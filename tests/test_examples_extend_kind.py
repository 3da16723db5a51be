"""examples/custom_kind.py runs as a user would run it: the monomial kind is proven for a rolled
state, a user-registered kind is recognised, and both are solved to lax.scan's values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "custom_kind.py"
SUBPROCESS_TIMEOUT = 600  # ~30 s of CPU; a loaded machine slows compilation several-fold


@pytest.mark.timeout(SUBPROCESS_TIMEOUT + 60)
def test_custom_kind_example_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 0, f"custom_kind.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "monomial (permutation: 1 cycle of length 6, 0 fixed)" in r.stdout
    assert "structure of J = ∂h_new/∂h: lower-triangular" in r.stdout
    assert "Newton, J in its proven structure (lower-triangular)" in r.stdout
