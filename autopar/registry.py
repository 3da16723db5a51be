"""One registry for every extension point: analysis passes, structure kinds, solvers and adjoint
strategies. A registry is a dict from name to entry that rejects a second entry under a taken
name unless the caller says ``override=True``, and names what it holds in its errors."""

from __future__ import annotations

from typing import Any

__all__ = ["Registry"]


class Registry(dict):
    """Entries by name, in registration order. ``what`` names one entry in messages ("pass")."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def add(self, name: Any, entry: Any, *, override: bool = False) -> None:
        """Register ``entry`` under ``name``; re-registering the same entry is a no-op."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string name; got {name!r}.")
        old = self.get(name)
        if old is not None and old is not entry and not override:
            held = old.__name__ if isinstance(old, type) else type(old).__name__
            raise ValueError(f"a {self.what} named {name!r} is already registered ({held}). "
                             "Choose another name, or pass override=True to replace it.")
        self[name] = entry

    def copy(self) -> Registry:
        out = Registry(self.what)
        out.update(self)
        return out

    def remove(self, name: str) -> None:
        if name not in self:
            raise KeyError(f"no {self.what} named {name!r}; registered: {sorted(self)}")
        del self[name]
