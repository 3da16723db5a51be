"""Write docs/api.md: the public API, in reading order, as mkdocstrings directives.

    python scripts/gen_api.py            # rewrite docs/api.md
    python scripts/gen_api.py --check    # exit 1 if docs/api.md is stale or names a missing object

The page itself is rendered from the docstrings by mkdocstrings (its python handler, in
the ``docs`` extra) when the site builds; this script only keeps the list of what is
documented in one place and checks that every listed name imports, so a rename cannot
leave a dead entry on the page (tests/test_docs.py runs ``--check``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (section title, module, names) — the public API, in reading order.
SECTIONS = [
    ("Making a recurrence parallel", "autopar", ["parallelize", "Parallelized", "scan", "explain"]),
    ("What happened: reports and solve info", "autopar", ["Report", "Info", "Result"]),
    ("Choosing a solver", "autopar.plan", ["make_plan", "Plan", "Candidate", "predict", "predict_backward"]),
    ("Cost model constants and calibration", "autopar.costs",
     ["BackendConstants", "constants_for", "set_constants", "clear_constants", "cache_dir", "cache_path",
      "device_key", "default_memory_budget", "step_flops", "step_ops"]),
    ("", "autopar.calibrate", ["calibrate"]),
    ("Process-wide settings (planner backend, default solver and backward)", "autopar.config",
     ["override", "set", "reset", "planner_backend", "solver", "backward", "resolve_backend", "snapshot"]),
    ("The structure lattice", "autopar.structure",
     ["Structure", "Zero", "Identity", "Scalar", "Diagonal", "Monomial", "BlockDiagonal", "Dense", "from_sparsity",
      "register_kind", "registered_kinds"]),
    ("Solvers", "autopar.solvers", ["Solver", "NewtonSolver", "Prediction", "Problem", "Stats", "register_solver",
                                    "get_solver", "solver_names"]),
    ("", "autopar.solvers.pricing", ["sizes", "flops", "seq_step_ops", "extraction", "scan", "residual", "levels",
                                     "newton"]),
    ("Adjoint strategies (backward=)", "autopar.adjoint", ["Adjoint", "register_adjoint", "backward_modes"]),
    ("Analysis passes", "autopar.passes", ["Pass", "Facts", "PassManager", "register", "analyse"]),
    ("Errors", "autopar", ["AutoparError"]),
]

HEADER = """# API reference

The docstrings of autopar's public API, rendered by mkdocstrings. The list of entries is
written by `scripts/gen_api.py` — edit `SECTIONS` there, not this page
(`tests/test_docs.py` fails when this page is stale).
"""


def render() -> str:
    out = [HEADER]
    for title, modname, names in SECTIONS:
        if title:
            out += [f"## {title}", ""]
        for name in names:
            out += [f"::: {modname}.{name}", ""]
    return "\n".join(out).rstrip() + "\n"


def missing() -> list[str]:
    bad = []
    for _, modname, names in SECTIONS:
        mod = importlib.import_module(modname)
        bad += [f"{modname}.{n}" for n in names if not hasattr(mod, n)]
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "api.md"))
    args = ap.parse_args(argv)
    bad = missing()
    if bad:
        print(f"listed in scripts/gen_api.py but not importable: {bad}", file=sys.stderr)
        return 1
    text = render()
    path = Path(args.out)
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run `python scripts/gen_api.py`", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
