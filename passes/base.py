"""The pass framework: a pass reads a ``Recurrence`` and adds named facts.

A pass is a small class with a ``name``, the facts it ``requires``, the facts it
``provides`` (returned on every run) and the facts it ``refines`` (facts another pass
provides, which this one may overwrite with a tighter value; returned only when it does).
``run(rec, facts)`` returns a dict of facts. The ``PassManager`` orders passes by their
dependencies (a refining pass runs after the provider), runs them, checks that each returned
exactly what it declared (``PassError`` names the pass and the fact otherwise), and wraps any
failure with the name of the pass and of the passes that ran before it.

Passes never build solvers: they only describe the recurrence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

from autopar.registry import Registry

__all__ = ["Facts", "Pass", "PassError", "PassManager", "register", "unregister", "registered_passes"]


class Facts(dict):
    """What the analysis proved about a recurrence: a dict with attribute access.

    Standard keys (see each pass): ``sparsity`` (D × D bool), ``discrete_sparsity``,
    ``degree`` ("constant" | "affine" | "piecewise-linear" | "nonlinear"), ``linear``
    (bool), ``structure`` (an ``autopar.structure.Structure``), ``conservative``
    (primitive names handled conservatively), ``notes`` (list of strings).
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no fact named {key!r}; known facts: {sorted(self)}") from None


class PassError(RuntimeError):
    """An analysis pass failed; the message names the pass and what ran before it."""


class Pass:
    """Base class of analysis passes."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    #: Facts provided by another pass that this one may overwrite (e.g. ``structure`` → kronecker).
    refines: ClassVar[tuple[str, ...]] = ()

    def run(self, rec: Any, facts: Facts) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError


_REGISTRY = Registry("pass")


def register(pass_: Pass | type, *, override: bool = False) -> Pass:
    """Add a pass to the default pipeline. Usable as a class decorator.

    Duplicate names are rejected unless ``override=True``.
    """
    inst = pass_() if isinstance(pass_, type) else pass_
    if not isinstance(inst, Pass):
        raise TypeError(f"register() takes a Pass subclass or instance; got {type(inst).__name__}.")
    if not inst.name:
        raise ValueError(f"pass {type(inst).__name__} needs a non-empty class attribute `name`.")
    _REGISTRY.add(inst.name, inst, override=override)
    return pass_


def unregister(name: str) -> None:
    _REGISTRY.remove(name)


def registered_passes() -> list[Pass]:
    return list(_REGISTRY.values())


@dataclasses.dataclass
class PassManager:
    """Runs passes in dependency order (a topological sort over requires → provides)."""

    passes: list[Pass]

    @classmethod
    def default(cls) -> "PassManager":
        return cls(registered_passes())

    def ordered(self) -> list[Pass]:
        """The passes in dependency order; among passes free to run, the one registered first.
        (A stdlib Kahn sort: importing networkx for this cost ~0.17 s of every first call.)"""
        import heapq

        provider: dict[str, str] = {}
        for p in self.passes:
            for f in p.provides:
                provider.setdefault(f, p.name)
        rank = {p.name: k for k, p in enumerate(self.passes)}
        after: dict[str, set[str]] = {p.name: set() for p in self.passes}  # edges provider -> user
        for p in self.passes:
            for what, facts in (("requires", p.requires), ("refines", p.refines)):
                for fact in facts:
                    if fact not in provider:
                        raise PassError(f"pass {p.name!r} {what} fact {fact!r}, which no registered pass provides.")
                    if provider[fact] != p.name:
                        after[provider[fact]].add(p.name)
        waiting = {n: 0 for n in after}
        for users in after.values():
            for u in users:
                waiting[u] += 1
        ready = [(rank[n], n) for n, k in waiting.items() if k == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for u in after[n]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(ready, (rank[u], u))
        if len(order) < len(after):
            raise PassError(f"passes depend on each other in a cycle: {_cycle(after, set(after) - set(order))}")
        by_name = {p.name: p for p in self.passes}
        return [by_name[n] for n in order]

    def run(self, rec: Any, facts: Facts | None = None) -> Facts:
        facts = Facts() if facts is None else facts
        done: list[str] = []
        for p in self.ordered():
            try:
                new = p.run(rec, facts) or {}
            except Exception as e:  # noqa: BLE001
                raise PassError(
                    f"analysis pass {p.name!r} failed on {getattr(rec, 'name', 'cell')!r} "
                    f"after {done or 'no other passes'}: {type(e).__name__}: {e}"
                ) from e
            _check_declared(p, new)
            facts.update(new)
            done.append(p.name)
        return facts


def _check_declared(p: Pass, new: dict) -> None:
    """A pass returns every fact it ``provides`` and nothing outside ``provides`` ∪ ``refines``."""
    extra = [k for k in new if k not in p.provides and k not in p.refines]
    if extra:
        raise PassError(f"analysis pass {p.name!r} returned fact {extra[0]!r}, which it does not declare: add it "
                        f"to `provides` (always returned) or `refines` (overwrites another pass's fact).")
    missing = [k for k in p.provides if k not in new]
    if missing:
        raise PassError(f"analysis pass {p.name!r} declares fact {missing[0]!r} in `provides` but did not return it.")


def iter_names(passes: Iterable[Pass]) -> list[str]:
    return [p.name for p in passes]


def _cycle(after: dict[str, set[str]], stuck: set[str]) -> list[tuple[str, str]]:
    """One cycle among the passes ``stuck`` (each has a predecessor among them), as edges."""
    n, seen = min(stuck), []
    while n not in seen:
        seen.append(n)
        n = min(m for m in stuck if n in after[m])  # a predecessor of n that is stuck too
    loop = seen[seen.index(n):][::-1]
    return [(a, b) for a, b in zip(loop, loop[1:] + loop[:1])]
