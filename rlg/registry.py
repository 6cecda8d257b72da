"""One shape for every named choice (evaluators, schedulers, checkpoint kinds, methods): a :class:`Registry`.

An entry is the object itself or its ``"module:attribute"`` path, imported on first :meth:`Registry.get`, so a
registry of heavy classes (torch, open_clip, easyocr) can be read (names, membership) without importing them; the
config check names the choices at start-up that way. A miss is one line that names the choices, raised as the
registry's own error class. (lm-evaluation-harness's ``lm_eval/api/registry.py`` has the same lazy
"module:object" entries; this keeps only what rlg uses.) Standard library only: a base module.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator


def resolve(target: Any) -> Any:
    """The object of a lazy ``"module:attribute"`` entry (imported now); any other target as it is."""
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


class Registry:
    """Names -> objects of one kind, in registration order.

    Args:
        kind: what an entry is, for messages (``"evaluator"``, ``"scheduler"``, ``"rl_kind"``).
        entries: initial {name: object or "module:attribute"}.
        error: the exception class :meth:`get` raises for an unknown name (default KeyError).

    ``registry[name]`` is the entry as registered (the path of a lazy entry); ``get(name)`` the object.
    """

    def __init__(self, kind: str, entries: dict[str, Any] | None = None, *, error: type[Exception] = KeyError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: Any = None) -> Any:
        """Add ``name`` -> ``target``; without ``target``, a decorator that registers what it decorates.
        Raises ValueError when ``name`` is taken (two plug-ins must not silently shadow each other)."""
        if target is None:
            def decorate(obj: Any) -> Any:
                self.register(name, obj)
                return obj
            return decorate
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already ({self._entries[name]!r})")
        self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return list(self._entries)

    def unknown(self, name: Any) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; use one of {', '.join(self._entries)}"

    def get(self, name: str, *, error: type[Exception] | None = None) -> Any:
        """The object registered as ``name``, importing a lazy entry on first use.
        Raises ``error`` (default the registry's) with :meth:`unknown`'s message."""
        if name not in self._entries:
            raise (error or self.error)(self.unknown(name))
        if name not in self._loaded:
            self._loaded[name] = resolve(self._entries[name])
        return self._loaded[name]

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise self.error(self.unknown(name))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


__all__ = ["Registry"]
