"""Stage 5: render what the analysis found and what the planner chose.

A ``Report`` holds the very Facts and Plan the emitter used — ``explain()`` never
computes a second opinion. ``str(report)`` is a plain-text summary to paste into
an issue; notebooks get the same text via ``_repr_markdown_``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["Report", "render_pattern"]


def render_pattern(pattern: np.ndarray, max_size: int = 64) -> str:
    """A text picture of a boolean D × D pattern ('#' nonzero, '.' zero)."""
    D = pattern.shape[0]
    if D > max_size:
        return f"(pattern of size {D}×{D} not drawn; D > {max_size})"
    return "\n".join("".join("#" if v else "." for v in row) for row in pattern)


def _fmt_time(t: float) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "—"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _fmt_bytes(b: float) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024:
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} PiB"


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """What autopar found and chose for one recurrence signature."""

    name: str
    facts: Any
    plan: Any
    layout: Any
    length: int

    @property
    def structure(self):
        """The proven structure of J (``.kind`` is its name, e.g. "diagonal")."""
        return self.facts["structure"]

    @property
    def linear(self) -> bool:
        """True when the state update is affine in h."""
        return bool(self.facts.get("linear", False))

    @property
    def degree(self) -> str:
        return self.facts.get("degree", "?")

    @property
    def solver(self) -> str:
        return self.plan.solver

    @property
    def sparsity(self) -> np.ndarray:
        """D × D bool: entry (i, j) may be nonzero in ∂h_new_i/∂h_j."""
        return np.asarray(self.facts["sparsity"], bool)

    @property
    def candidates(self):
        return self.plan.candidates

    @property
    def conservative(self) -> list[str]:
        return list(self.facts.get("conservative", []))

    def __str__(self) -> str:
        st = self.structure
        lines = [f"autopar report for {self.name!r}: T={self.length}, D={self.layout.size} ({np.dtype(self.layout.vec_dtype).name})"]
        lines.append("state layout:")
        lines += [f"  {row}" for row in self.layout.describe()]
        lines.append(f"structure of J = ∂h_new/∂h: {st.describe()}  (extraction: {st.n_jvps} JVP{'s' if st.n_jvps != 1 else ''} per step)")
        lines.append(f"degree in h: {self.degree}  (linear: {self.linear})")
        if self.facts.get("formula"):
            lines.append(f"formula: {self.facts['formula']}")
        if self.conservative:
            lines.append(f"handled conservatively (no rule; assumed dense): {', '.join(self.conservative)}")
        for note in self.facts.get("notes", []):
            lines.append(f"note: {note}")
        if self.layout.size <= 64 and self.layout.size > 0:
            lines.append("sparsity pattern (rows: new state, cols: state):")
            lines += ["  " + r for r in render_pattern(self.sparsity).splitlines()]
        lines.append(f"solver: {self.solver}  ({self.plan.reason})")
        breason = getattr(self.plan, "backward_reason", "")
        lines.append(f"backward: {self.plan.backward}" + (f"  ({breason})" if breason else ""))
        lines.append(f"candidates on {self.plan.backend}:")
        lines.append(f"  {'solver':<12} {'applies':<8} {'pred. time':>11} {'pred. memory':>13} {'iters':>6} {'depth':>7} {'work':>9}  reason")
        for c in self.candidates:
            mark = "*" if c.chosen else " "
            iters = "—" if math.isnan(c.iterations) else f"{c.iterations:g}"
            depth = getattr(c, "depth", math.nan)
            work = getattr(c, "work", math.nan)
            depth = "—" if math.isnan(depth) else f"{depth:.0f}"
            work = "—" if math.isnan(work) else f"{work:.2g}"
            lines.append(
                f"{mark} {c.solver:<12} {str(c.applies):<8} {_fmt_time(c.time):>11} {_fmt_bytes(c.memory):>13} {iters:>6} {depth:>7} {work:>9}  {c.reason}"
            )
        budget = getattr(self.plan, "memory_budget", None)
        K = getattr(self.plan, "constants", None)
        foot = []
        if budget is not None:
            foot.append(f"memory budget {_fmt_bytes(budget)}")
        if K is not None:
            foot.append(f"constants: {K.source}")
        if foot:
            lines.append("  (" + "; ".join(foot) + ")")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return "```\n" + str(self) + "\n```"

    def __repr__(self) -> str:
        return f"<Report {self.name!r}: {self.structure.describe()}, {self.degree}, solver={self.solver}>"

    def plot(self, ax=None):
        """Draw the sparsity pattern with matplotlib (optional dependency)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover
            raise ImportError("report.plot() needs matplotlib: pip install 'autopar[plot]'") from e
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(self.sparsity, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{self.name}: {self.structure.describe()}")
        ax.set_xlabel("state j")
        ax.set_ylabel("new state i")
        return ax
