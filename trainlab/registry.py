"""Name -> component registries.

Everything a user can name on the command line (a workload, a model, an optimizer, a schedule) is found
through a :class:`Registry`. An entry is data, not magic: the callable that builds the component, the typed
options it accepts (see :mod:`trainlab.config`), and free-form metadata (``source``, ``paper``, ...) that
``trainlab list`` prints.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar
from trainlab.errors import UnknownNameError  # noqa: F401  (defined there; imported from here too)

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    ``options`` is a dataclass type whose fields are the component's typed, defaulted options, or ``None``
    when the options are derived elsewhere (e.g. from a constructor signature).
    """

    name: str
    factory: Callable[..., T]
    options: type | None = None
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """An ordered mapping from lower-case names to :class:`Entry` objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., T],
        *,
        options: type | None = None,
        summary: str = "",
        **meta: Any,
    ) -> Entry[T]:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(key, factory, options, summary, dict(meta))
        self._entries[key] = entry
        return entry

    def register(self, name: str, *, options: type | None = None, summary: str = "", **meta: Any):
        """Decorator form of :meth:`add`."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory, options=options, summary=summary, **meta)
            return factory

        return wrap

    def get(self, name: str) -> Entry[T]:
        key = str(name).lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(self._entries)}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
