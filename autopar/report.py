"""Stage 5: render what the analysis found and what the planner chose.

A ``Report`` holds the very Facts and Plan the emitter used — ``explain()`` never
computes a second opinion. ``str(report)`` is a plain-text summary to paste into
an issue. Patterns a picture adds nothing to (diagonal, dense, blocks) are one line;
others are drawn in at most 16 rows (``report.pattern()`` or ``report.plot()`` for the
full one), and notebooks render the full pattern as an image (``_repr_html_``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["Report", "render_pattern", "summarize_pattern"]


def render_pattern(pattern: np.ndarray, max_size: int = 64) -> str:
    """A text picture of a boolean D × D pattern ('#' nonzero, '.' zero)."""
    D = pattern.shape[0]
    if D > max_size:
        return f"(pattern of size {D}×{D} not drawn; D > {max_size})"
    return "\n".join("".join("#" if v else "." for v in row) for row in pattern)


def render_pattern_tiled(pattern: np.ndarray, max_rows: int = 16) -> tuple[str, int]:
    """The pattern drawn in at most ``max_rows`` rows: each character is a k × k tile
    ('#' every entry may be nonzero, '+' some, '.' none). Returns (picture, k)."""
    P = np.asarray(pattern, bool)
    D = P.shape[0]
    k = max(1, -(-D // max_rows))
    if k == 1:
        return render_pattern(P, max_size=D), 1
    n = -(-D // k)
    pad = np.zeros((n * k, n * k), bool)
    pad[:D, :D] = P
    valid = np.zeros((n * k, n * k), bool)
    valid[:D, :D] = True
    tiles = pad.reshape(n, k, n, k).sum(axis=(1, 3))
    sizes = valid.reshape(n, k, n, k).sum(axis=(1, 3))
    chars = np.where(tiles == 0, ".", np.where(tiles == sizes, "#", "+"))
    return "\n".join("".join(row) for row in chars), k


def _components(P: np.ndarray) -> list[np.ndarray]:
    """Connected components of the undirected graph i ~ j when P[i, j] or P[j, i]."""
    D = P.shape[0]
    parent = np.arange(D)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(P | P.T)):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(D)])
    return [np.nonzero(roots == r)[0] for r in np.unique(roots)]


def summarize_pattern(pattern: np.ndarray) -> str | None:
    """One line for a pattern a picture would add nothing to, else None.

    ``"zero"``, ``"diagonal (64)"``, ``"dense (16 × 16)"``, ``"4 blocks of 16"``,
    ``"4 blocks of 16 (permuted)"``, ``"3 blocks of sizes 2, 2, 4"``.
    """
    P = np.asarray(pattern, bool)
    D = P.shape[0]
    if D == 0:
        return "empty (no float state)"
    if not P.any():
        return "zero (the new state does not read the state)"
    off = P & ~np.eye(D, dtype=bool)
    if not off.any():
        nz = int(P.diagonal().sum())
        return f"diagonal ({D})" if nz == D else f"diagonal ({nz} of {D} entries; the others do not read the state)"
    if P.all():
        return f"dense ({D} × {D})"
    comps = _components(P)
    if len(comps) > 1 and all(P[np.ix_(c, c)].all() for c in comps):
        sizes = [len(c) for c in comps]
        contiguous = all(c[-1] - c[0] + 1 == len(c) for c in comps)
        where = "" if contiguous else " (permuted)"
        if len(set(sizes)) == 1:
            return f"{len(comps)} blocks of {sizes[0]}{where}"
        return f"{len(comps)} blocks of sizes {', '.join(map(str, sorted(sizes)))}{where}"
    return None


def _candidate_reason(c: Any) -> str:
    """What the solver does (its ``describe``) when it applies, else why it does not."""
    note = getattr(c, "note", "")
    return note if c.applies and note else c.reason


def _formula_lines(formula: str, max_lines: int = 4) -> list[str]:
    """One line per element's formula, at most ``max_lines``; the rest counted, not cut."""
    eqs = formula.split("; ")
    lines = [f"formula: {eqs[0]}"] + [f"         {e}" for e in eqs[1:max_lines]]
    if len(eqs) > max_lines:
        lines.append(f"         … ({len(eqs) - max_lines} more: report.facts['formula'])")
    return lines


def _short(value: Any, width: int = 70) -> str:
    if isinstance(value, np.ndarray) or hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.size > 8:
            return f"{arr.dtype.name}{list(arr.shape)}"
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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
    #: ``explain(..., measure=True)``: solver -> measured seconds (or why it was not run), else None.
    measured: Any = None

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

    @property
    def user_facts(self) -> dict:
        """Facts provided by passes registered outside autopar (``autopar.passes.register``)."""
        from .passes import registered_passes

        builtin, user = set(), {}
        for p in registered_passes():
            mod = type(p).__module__
            if mod.startswith(("autopar.", "passes.")) or mod in ("autopar", "passes"):
                builtin.update(p.provides)
        for p in registered_passes():
            mod = type(p).__module__
            if not (mod.startswith(("autopar.", "passes.")) or mod in ("autopar", "passes")):
                for k in p.provides:
                    if k not in builtin and k in self.facts:
                        user[k] = self.facts[k]
        return user

    @property
    def pattern_summary(self) -> str | None:
        """The sparsity pattern in one line ("diagonal (64)", "4 blocks of 16 (permuted)"), or None
        when only a picture says it (see `pattern`)."""
        return summarize_pattern(self.sparsity)

    def pattern(self, max_rows: int | None = None) -> str:
        """The sparsity pattern as text, one character per entry ('#' may be nonzero, '.' zero);
        with ``max_rows``, in tiles so it is at most that tall ('+' a tile with some nonzeros)."""
        if max_rows is None:
            return render_pattern(self.sparsity, max_size=self.sparsity.shape[0])
        return render_pattern_tiled(self.sparsity, max_rows)[0]

    def _extraction(self) -> str:
        st = self.structure
        n = st.n_jvps
        text = f"{n} JVP{'s' if n != 1 else ''} per step"
        colors = self.facts.get("colors")
        c = colors.get("n") if isinstance(colors, dict) else None
        if c is not None and c != n and st.kind != "zero":
            text += f"; colouring the sparsity pattern alone would take {c}"
        return text

    def __str__(self) -> str:
        st = self.structure
        D = self.layout.size
        lines = [f"autopar report for {self.name!r}: T={self.length}, D={D} ({np.dtype(self.layout.vec_dtype).name})"]
        lines.append("state layout:")
        lines += [f"  {row}" for row in self.layout.describe()]
        lines.append(f"structure of J = ∂h_new/∂h: {st.describe()}  (extraction: {self._extraction()})")
        lines.append(f"degree in h: {self.degree}  (linear: {self.linear})")
        if self.facts.get("formula"):
            lines += _formula_lines(str(self.facts["formula"]))
        if self.conservative:
            lines.append(f"handled conservatively (no rule; assumed dense): {', '.join(self.conservative)}")
        for note in self.facts.get("notes", []):
            if note.startswith("compressed extraction:"):
                continue  # said, for the final structure, on the structure line
            lines.append(f"note: {note}")
        for k, v in self.user_facts.items():
            lines.append(f"fact {k}: {_short(v)}  (from a user pass)")
        if D > 0:
            summary = self.pattern_summary
            if summary is not None:
                lines.append(f"sparsity pattern: {summary}")
            else:
                nnz = int(self.sparsity.sum())
                pic, k = render_pattern_tiled(self.sparsity, 16)
                tile = "" if k == 1 else f"; each character a {k}×{k} tile: # all, + some, . none"
                lines.append(f"sparsity pattern ({nnz} of {D * D} entries may be nonzero; rows: new state, "
                             f"cols: state{tile}; full: report.pattern() or report.plot()):")
                lines += ["  " + r for r in pic.splitlines()]
        split = self.facts.get("hoisted")
        if split is not None:
            moved, kept = sum(split.outer_ops), sum(split.inner_ops)
            lines.append(f"sequential loop: {moved:g} kernel(s) that read no state moved out, computed for all T at "
                         f"once; {kept:g} left in the loop; {split.residual_floats} residual floats a step")
        lines.append(f"solver: {self.solver}  ({self.plan.reason})")
        breason = getattr(self.plan, "backward_reason", "")
        lines.append(f"backward: {self.plan.backward}" + (f"  ({breason})" if breason else ""))
        shards = getattr(self.plan, "shards", None)
        if shards is not None:
            lines.append(f"sharding: {shards.describe()}")
        lines.append(f"candidates on {self.plan.backend}:")
        w = max([6] + [len(c.solver) for c in self.candidates])
        meas = self.measured or {}
        mcol = bool(meas)
        lines.append(f"  {'solver':<{w}} {'applies':<7} {'pred. time':>10} "
                     + (f"{'measured':>10} {'meas/pred':>9} " if mcol else "")
                     + f"{'pred. memory':>12} {'iters':>5} {'depth':>6} {'work':>7}  reason")
        for c in self.candidates:
            mark = "*" if c.chosen else " "
            iters = "—" if math.isnan(c.iterations) else f"{c.iterations:g}"
            depth = getattr(c, "depth", math.nan)
            work = getattr(c, "work", math.nan)
            depth = "—" if math.isnan(depth) else f"{depth:.0f}"
            work = "—" if math.isnan(work) else f"{work:.2g}"
            applies = "yes" if c.applies else "no"
            mtxt = ""
            if mcol:
                m = meas.get(c.solver)
                if isinstance(m, float):
                    mtxt = f"{_fmt_time(m):>10} {m / c.time:>9.2f} "
                else:
                    mtxt = f"{'—':>10} {'':>9} "
            lines.append(
                f"{mark} {c.solver:<{w}} {applies:<7} {_fmt_time(c.time):>10} {mtxt}{_fmt_bytes(c.memory):>12} "
                f"{iters:>5} {depth:>6} {work:>7}  {_candidate_reason(c)}"
                + (f"; {meas[c.solver]}" if isinstance(meas.get(c.solver), str) else "")
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
        lines += self._measured_summary(K)
        return "\n".join(lines)

    def _measured_summary(self, K) -> list[str]:
        """After ``measure=True``: the fastest measured candidate against the choice."""
        timed = {k: v for k, v in (self.measured or {}).items() if isinstance(v, float)}
        if not timed:
            return []
        fastest = min(timed, key=timed.get)
        chosen = self.plan.solver
        out = [f"  measured (min of interleaved runs, compile excluded): fastest {fastest} {_fmt_time(timed[fastest])}"]
        if chosen in timed and fastest != chosen:
            out[-1] += f"; the choice {chosen} took {timed[chosen] / timed[fastest]:.2f}× that"
            if K is not None and str(K.source).startswith("default"):
                out.append("  the constants are built-in defaults: autopar.calibrate() measures this machine's")
        elif chosen in timed:
            out[-1] += " (the choice)"
        return out

    def _repr_html_(self) -> str:
        """Notebook view: the text report, and the full sparsity pattern drawn as an image."""
        import html

        out = [f"<pre>{html.escape(str(self))}</pre>"]
        D = self.layout.size
        if 0 < D <= 512:
            cell = max(1, min(8, 384 // D))
            rects = "".join(f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}"/>'
                            for i, j in zip(*np.nonzero(self.sparsity)))
            out.append(
                f"<div>sparsity pattern of J ({D} × {D}; rows: new state, cols: state)</div>"
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{D * cell}" height="{D * cell}" '
                f'style="border:1px solid #888"><g fill="#222">{rects}</g></svg>'
            )
        return "\n".join(out)

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
