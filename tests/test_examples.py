"""Every script in examples/ runs (a smoke run with small sizes), as a user would run it.

The smoke runs take well under a minute each on 2 quiet cores, but most of that is XLA
compilation, which a loaded machine (a shared CI runner, four test sessions on two cores) can
slow down five-fold or more. So the subprocess gets a generous limit that still catches a hang,
and this test raises its own pytest-timeout above it (the suite default is 300 s).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: Arguments for a quick run of each example; a new example must be added here.
QUICK_ARGS = {
    "demo.py": ["--quick"],
    "custom_pass.py": [],
    "custom_kind.py": [],
    "custom_solver.py": [],
    "custom_rule.py": [],
    "train_diag_gru.py": ["--steps", "3"],
    "sharded.py": ["--T", "200"],
}


def test_every_example_has_a_smoke_run():
    missing = [p.name for p in EXAMPLES if p.name not in QUICK_ARGS]
    assert not missing, f"add quick-run arguments for {missing} to QUICK_ARGS"


#: Seconds one smoke run may take before it counts as hung (quiet 2-core machine: demo ~60 s).
SUBPROCESS_TIMEOUT = 900


@pytest.mark.timeout(SUBPROCESS_TIMEOUT + 60)
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run([sys.executable, str(script), *QUICK_ARGS[script.name]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{script.name} {' '.join(QUICK_ARGS[script.name])} did not finish in {SUBPROCESS_TIMEOUT} s "
                    f"(hung?). Last output:\n{out[-2000:]}\n{err[-2000:]}")
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if script.name == "demo.py":
        # the speed table names every cell; the demo itself exits 1 if any result is off lax.scan's
        for cell in ("mamba-ssm", "lru (complex)", "deltanet", "diag-gru", "gru", "lstm"):
            assert cell in r.stdout
        assert "every result matches lax.scan" in r.stdout
