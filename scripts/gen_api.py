"""Write docs/api.md from the docstrings of autopar's public API.

    python scripts/gen_api.py            # rewrite docs/api.md
    python scripts/gen_api.py --check    # exit 1 if docs/api.md is stale (run by tests/test_docs.py)

A plain script on purpose: it needs nothing beyond autopar itself, so the API page
builds offline and CI can check it is up to date without any documentation plugin.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (section title, module, names) — the public API, in reading order.
SECTIONS = [
    ("Making a recurrence parallel", "autopar", ["parallelize", "Parallelized", "scan", "explain"]),
    ("What happened: reports and solve info", "autopar", ["Report", "Info"]),
    ("Choosing a solver", "autopar.plan", ["make_plan", "Plan", "Candidate", "predict", "predict_backward"]),
    ("Cost model constants and calibration", "autopar.costs",
     ["BackendConstants", "constants_for", "set_constants", "clear_constants", "cache_dir", "cache_path",
      "device_key", "default_memory_budget", "step_flops", "step_ops"]),
    ("", "autopar.calibrate", ["calibrate"]),
    ("Process-wide settings (planner backend, default solver and backward)", "autopar.config",
     ["override", "set", "reset", "planner_backend", "solver", "backward", "resolve_backend", "snapshot"]),
    ("The structure lattice", "autopar.structure",
     ["Structure", "Zero", "Identity", "Scalar", "Diagonal", "BlockDiagonal", "Dense", "from_sparsity"]),
    ("Solvers", "autopar.solvers", ["Solver", "Problem", "Stats", "register_solver", "get_solver", "solver_names"]),
    ("Analysis passes", "autopar.passes", ["Pass", "Facts", "PassManager", "register", "analyse"]),
    ("Errors", "autopar", ["AutoparError"]),
]


def _signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return sig


def _doc(obj) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(no docstring)")


def _indent_code(doc: str) -> str:
    """Docstrings are reST-ish: show them verbatim in a text block so nothing is misrendered."""
    return "```text\n" + doc + "\n```"


def render() -> str:
    out = ["# API reference", "",
           "Generated from the docstrings by `scripts/gen_api.py` — do not edit by hand "
           "(`tests/test_docs.py` fails when this page is stale).", ""]
    for title, modname, names in SECTIONS:
        mod = importlib.import_module(modname)
        if title:
            out += [f"## {title}", ""]
        for name in names:
            obj = getattr(mod, name)
            qual = f"{modname}.{name}"
            if inspect.isclass(obj):
                out += [f"### `{qual}`", "", f"`class {name}{_signature(obj)}`", "", _indent_code(_doc(obj)), ""]
                members = []
                for mname, member in sorted(vars(obj).items()):
                    if mname.startswith("_") and mname != "__call__":
                        continue
                    if isinstance(member, property):
                        members.append((mname, "", member.fget.__doc__))
                    elif inspect.isfunction(member) and member.__doc__:
                        members.append((mname, _signature(member), member.__doc__))
                    elif isinstance(member, (classmethod, staticmethod)) and member.__func__.__doc__:
                        members.append((mname, _signature(member.__func__), member.__func__.__doc__))
                for mname, sig, mdoc in members:
                    if not mdoc:
                        continue
                    out += [f"- **`{mname}{sig}`** — " + inspect.cleandoc(mdoc).replace("\n", " ")]
                if members:
                    out.append("")
            else:
                out += [f"### `{qual}`", "", f"`{name}{_signature(obj)}`", "", _indent_code(_doc(obj)), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "api.md"))
    args = ap.parse_args(argv)
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
