"""A small name → object registry shared by metrics and explainers.

``Registry("metric")`` gives a ``register(name, **meta)`` decorator, ``get``
and ``names``; an unknown name lists the known ones and suggests the closest,
and registering a name twice is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects, with per-entry metadata (e.g. a metric's direction)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name", higher_is_better=True)``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({self._items[name]!r})"
                )
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``ValueError`` listing the names if unknown."""
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}"
            )
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (a copy)."""
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
