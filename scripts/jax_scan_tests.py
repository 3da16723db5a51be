"""JAX's own scan tests as autopar.scan's contract (issue 11).

    python scripts/jax_scan_tests.py --test-file /path/to/jax/tests/lax_control_flow_test.py
    python scripts/jax_scan_tests.py --jax-repo /path/to/jax --out scan_tests.json

Takes JAX's ``tests/lax_control_flow_test.py`` from a checkout the user fetched (matching the
installed jax: with ``--jax-repo`` the file is read at the tag ``jax-v<installed version>``),
writes a copy where every ``lax.scan`` / ``jax.lax.scan`` call is ``autopar.scan``, and runs the
``-k scan`` selection of both the original (the baseline) and the copy with pytest. Prints the
pass / fail / skip counts side by side and writes the failing test ids, grouped by test name
prefix, to ``--out``. Needs ``absl-py`` (JAX's test utilities import it). Nothing is vendored.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: ``lax.scan`` / ``jax.lax.scan`` as a name, not ``lax.scan_p`` or ``lax.scan_bind``.
SCAN = re.compile(r"\b(?:jax\.)?lax\.scan\b(?![_\w])")


def rewrite(source: str) -> tuple[str, int]:
    """The test module with every reference to lax.scan replaced by autopar.scan."""
    out, n = SCAN.subn("autopar.scan", source)
    # import autopar right after the module docstring / license header's first import
    out = out.replace("import jax\n", "import jax\nimport autopar\n", 1)
    return out, n


def _run(path: Path, select: str, junit: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select, str(path),
           f"--junitxml={junit}", "-o", "addopts=", "--timeout", str(int(timeout))]
    subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True)
    return _parse(junit)


def _parse(junit: Path) -> dict:
    import xml.etree.ElementTree as ET

    res = {"passed": [], "failed": [], "skipped": []}
    if not junit.exists():
        return res
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            res["failed"].append(name)
        elif case.find("skipped") is not None:
            res["skipped"].append(name)
        else:
            res["passed"].append(name)
    return res


def _prefix(test_id: str) -> str:
    """The test's name without its parameters: testScanJVP_jit_scan=... -> testScanJVP."""
    name = test_id.split("[", 1)[0]
    return name if name.startswith("test_") else name.split("_", 1)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--test-file", type=Path, help="a copy of jax's tests/lax_control_flow_test.py")
    src.add_argument("--jax-repo", type=Path, help="a jax git checkout (the file is read at the installed tag)")
    ap.add_argument("-k", "--select", default="scan", help="pytest -k expression (default: scan)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with the real lax.scan")
    ap.add_argument("--timeout", type=float, default=600, help="per-test timeout in seconds")
    ap.add_argument("--out", type=Path, default=Path("scan_tests.json"))
    args = ap.parse_args(argv)

    import jax

    if args.jax_repo:
        tag = f"jax-v{jax.__version__}"
        source = subprocess.run(["git", "--git-dir", str(args.jax_repo / ".git") if (args.jax_repo / ".git").exists()
                                 else str(args.jax_repo), "show", f"{tag}:tests/lax_control_flow_test.py"],
                                capture_output=True, text=True, check=True).stdout
    else:
        source = args.test_file.read_text()
    patched, n = rewrite(source)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "baseline_lcf_test.py").write_text(source)
        (tmp / "autopar_lcf_test.py").write_text(patched)
        print(f"jax {jax.__version__}: {n} references to lax.scan replaced by autopar.scan", flush=True)
        base = None if args.no_baseline else _run(tmp / "baseline_lcf_test.py", args.select, tmp / "b.xml", args.timeout)
        ours = _run(tmp / "autopar_lcf_test.py", args.select, tmp / "a.xml", args.timeout)
    rows = [("autopar.scan", ours)] + ([("lax.scan (baseline)", base)] if base else [])
    for label, r in rows:
        print(f"{label:22s} passed {len(r['passed']):4d}  failed {len(r['failed']):4d}  skipped {len(r['skipped']):4d}")
    groups = collections.Counter(_prefix(t) for t in ours["failed"])
    for g, c in groups.most_common():
        print(f"  failing: {g}* x{c}")
    newly = sorted(set(ours["failed"]) - set(base["failed"])) if base else ours["failed"]
    args.out.write_text(json.dumps({"jax": jax.__version__, "select": args.select,
                                    "autopar": {k: len(v) for k, v in ours.items()},
                                    "baseline": {k: len(v) for k, v in base.items()} if base else None,
                                    "failing_groups": dict(groups), "failing": newly}, indent=1))
    print(f"summary: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
