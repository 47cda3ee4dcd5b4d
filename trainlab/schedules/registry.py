"""The schedule registry: ``name -> factory(options, total_steps) -> (step -> lr multiplier)``.

A schedule is a pure function of the step it is given (nanoGPT's ``get_lr(it)``, optax's ``Schedule``): no
hidden ``last_epoch`` counter, so resuming, evaluating and plotting a schedule all ask the same function.
The trainer sets ``lr = base_lr · multiplier(step)`` before step ``step`` (0-based) and logs it.
"""

from __future__ import annotations

from typing import Any, Callable

from trainlab.config import build_options
from trainlab.registry import Registry

Multiplier = Callable[[int], float]
ScheduleFactory = Callable[[Any, int], Multiplier]  # (options, total_steps) -> multiplier
SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


def register(name: str, *, options: type, summary: str = "",
             **meta: Any) -> Callable[[ScheduleFactory], ScheduleFactory]:
    def wrap(factory: ScheduleFactory) -> ScheduleFactory:
        SCHEDULES.add(name, factory, options=options,
                      summary=summary or (factory.__doc__ or "").strip().split("\n")[0], **meta)
        return factory

    return wrap


def build(name: str, total_steps: int, **options: Any) -> Multiplier:
    """The multiplier function of schedule ``name`` for a run of ``total_steps`` steps."""
    entry = SCHEDULES.get(name)
    assert entry.options is not None
    return entry.factory(build_options(entry.options, options, prefix="schedule"), total_steps)


def names() -> list[str]:
    return SCHEDULES.names()
