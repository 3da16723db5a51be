"""examples/custom_solver.py — a user-registered solver, priced by its own cost(), listed by
explain(), forced with its own option and checked against lax.scan — runs as a user would run it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "custom_solver.py"


@pytest.mark.timeout(600)
def test_custom_solver_example():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, f"custom_solver.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout
    assert "refused: solver 'unpriced' defines no cost" in out
    assert "picard" in out and "Picard sweeps: one vmapped step each" in out  # a row of the candidate table
    assert "the custom solver matches lax.scan" in out
