"""Name -> component registries.

Everything a user can name on the command line (a workload, a model, an optimizer, a schedule) is found
through a :class:`Registry`. An entry is data, not magic: the callable that builds the component, the typed
options it accepts (see :mod:`trainlab.config`), and free-form metadata (``source``, ``paper``, ...) that
``trainlab list`` prints.

A registry may also hold *sources*: loaders that register many entries at once and run only when a name is
looked up that the registry does not hold yet, or when the whole registry is listed (:meth:`Registry.add_source`).
That keeps start-up cheap where a family of components is expensive to enumerate: importing
``pytorch_optimizer`` and inspecting its ~130 classes takes 0.8 s, which every command used to pay.
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
    factory: T  # what builds the component: a class or a function, as the registry's type parameter says
    options: type | None = None
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """An ordered mapping from lower-case names to :class:`Entry` objects, plus pending sources of more.

    ``T`` is the type of the entries' factories (``Registry[type[Workload]]``, ``Registry[Callable[..., X]]``),
    so ``registry.get(name).factory`` is typed as what was registered, class attributes included.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._sources: list[Callable[[], None]] = []

    def add(
        self,
        name: str,
        factory: T,
        *,
        options: type | None = None,
        summary: str = "",
        **meta: Any,
    ) -> Entry[T]:
        """Register ``name``. A name that a pending source might hold runs the sources first, so adding a name
        the source has is the same error whether or not the source has run yet."""
        key = name.lower()
        if self._find(key) is not None:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(key, factory, options, summary, dict(meta))
        self._entries[key] = entry
        return entry

    def register(self, name: str, *, options: type | None = None, summary: str = "",
                 **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def wrap(factory: T) -> T:
            self.add(name, factory, options=options, summary=summary, **meta)
            return factory

        return wrap

    def add_source(self, load: Callable[[], None]) -> None:
        """Register entries later: ``load()`` (which calls :meth:`add`) runs once, at the first lookup of a name
        the registry does not hold yet, or at the first :meth:`names`, iteration or ``len``.

        Its entries come after every entry added before it ran, so a source added after the eager entries, and
        with no eager entries added later, yields the same names in the same order as calling ``load()`` right
        away; a source that checks for taken names (``name in registry``) sees the eager ones.
        """
        self._sources.append(load)

    def _load_sources(self) -> bool:
        """Run the pending sources in the order they were added; whether there were any.

        Each is removed before it runs, so it may look names up itself; one that raises is not retried (its
        error reaches the lookup that ran it).
        """
        pending = bool(self._sources)
        while self._sources:
            self._sources.pop(0)()
        return pending

    def _find(self, key: str) -> Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None and self._load_sources():
            entry = self._entries.get(key)
        return entry

    def get(self, name: str) -> Entry[T]:
        key = str(name).lower()
        entry = self._find(key)
        if entry is None:
            close = difflib.get_close_matches(key, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(self._entries)}"
            )
        return entry

    def names(self) -> list[str]:
        self._load_sources()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name.lower()) is not None

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_sources()
        return iter(self._entries.values())

    def __len__(self) -> int:
        self._load_sources()
        return len(self._entries)
