"""The workload registry: ``name -> Workload subclass`` plus its options dataclass."""

from __future__ import annotations

from typing import Any, Callable

from trainlab.config import build_options
from trainlab.registry import Registry
from trainlab.workloads.base import Workload

WORKLOADS: Registry[type[Workload]] = Registry("workload")


def register(name: str, *, options: type, summary: str = "", **meta: Any) -> Callable[[type[Workload]], type[Workload]]:
    """Class decorator: register a :class:`Workload` subclass under ``name`` with its options dataclass."""

    def wrap(cls: type[Workload]) -> type[Workload]:
        cls.name = name
        WORKLOADS.add(name, cls, options=options, summary=summary or (cls.__doc__ or "").strip().split("\n")[0], **meta)
        return cls

    return wrap


def build(name: str, **options: Any) -> Workload:
    """Build a workload by registry name; ``options`` are validated against its options dataclass.

    >>> wl = build("modular", p=7, op="add")
    """
    entry = WORKLOADS.get(name)
    assert entry.options is not None
    return entry.factory(build_options(entry.options, options, prefix="workload"))


def names() -> list[str]:
    return WORKLOADS.names()
