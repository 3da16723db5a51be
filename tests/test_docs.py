"""The documentation: every python code block runs, the API page is current, the site builds.

Code blocks are run per page, in order, in one namespace (like a reader following the
page), with a private calibration cache. Blocks fenced as ```text / ```bash do not run.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autopar import costs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "cache"))
    costs.clear_constants()
    yield
    costs.clear_constants()


@pytest.fixture
def private_registries():
    """A page may register passes or primitive rules (docs/passes.md does): undo that afterwards
    so other tests (and the example that registers the same names) start from the defaults."""
    from autopar.passes import base, rules

    passes, user_rules = dict(base._REGISTRY), rules.registered_rules()
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(passes)
    for name in rules.registered_rules():
        rules.unregister_rule(name)
    for name, entry in user_rules.items():
        rules.register_rule(name, **entry, override=True)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(page, private_cache, private_registries):
    ns = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(python_blocks(page)):
        code = compile(block, f"{page.relative_to(ROOT)} [python block {i + 1}]", "exec")
        exec(code, ns)  # noqa: S102 - the docs are ours


def test_fence_regex_finds_blocks():
    assert python_blocks(DOCS / "choosing.md"), "choosing.md should contain runnable examples"


def test_api_page_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr + "\nRegenerate with: python scripts/gen_api.py"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in PAGES if p.name not in nav]
    assert not missing, f"add these pages to the nav in mkdocs.yml: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (pip install '.[docs]')")
def test_site_builds_strict(tmp_path):
    exe = shutil.which("mkdocs")
    cmd = [exe] if exe else [sys.executable, "-m", "mkdocs"]
    r = subprocess.run(cmd + ["build", "--strict", "--site-dir", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").exists()
