"""The model registry: ``name -> factory(spec, options) -> nn.Module``.

Each entry's metadata has ``input_kinds``: the input kinds (see :mod:`trainlab.workloads.base`) the model
reads, preferred first.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from trainlab.config import build_options
from trainlab.registry import Registry
from trainlab.workloads.base import DataSpec

ModelFactory = Callable[[DataSpec, Any], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def register(name: str, *, options: type, input_kinds: tuple[str, ...], summary: str = "",
             **meta: Any) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator for ``factory(spec: DataSpec, options) -> nn.Module``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        MODELS.add(name, factory, options=options, summary=summary or (factory.__doc__ or "").strip().split("\n")[0],
                   input_kinds=tuple(input_kinds), **meta)
        return factory

    return wrap


def input_kinds(name: str) -> tuple[str, ...]:
    return MODELS.get(name).meta["input_kinds"]


def build(name: str, spec: DataSpec, **options: Any) -> nn.Module:
    """Build a model for data described by ``spec``; ``options`` are validated against its options dataclass."""
    entry = MODELS.get(name)
    assert entry.options is not None
    if spec.input_kind not in entry.meta["input_kinds"]:
        raise ValueError(f"model {name!r} reads {', '.join(entry.meta['input_kinds'])} inputs, not {spec.input_kind}")
    return entry.factory(spec, build_options(entry.options, options, prefix="model"))


def names() -> list[str]:
    return MODELS.names()
