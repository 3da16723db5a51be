"""Every number the planner predicts for a dozen varied cells is pinned (``tests/plan_snapshot.txt``):
a refactor of the planner, the solvers' ``cost()`` or the shared pricing must not move any of them.

A deliberate change to the cost model regenerates the file:
``PYTHONPATH=. python -m tests.plan_snapshot > tests/plan_snapshot.txt`` (and says why in the commit).
"""

import difflib
from pathlib import Path

from tests.plan_snapshot import snapshot

PINNED = Path(__file__).with_name("plan_snapshot.txt")


def test_planner_predictions_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "cache"))  # the built-in constants
    got, want = snapshot(), PINNED.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "pinned", "now", n=1))
    assert got == want, f"planner predictions changed:\n{diff[:6000]}"
