"""Use a trainlab schedule as a ``torch.optim.lr_scheduler.LRScheduler`` in a hand-written loop.

``LambdaLR`` applies ``multiplier(0)`` when it is constructed and ``multiplier(k)`` at its ``k``-th
``step()`` call, so in the usual order::

    scheduler = as_lr_scheduler(optimizer, "cosine", total_steps=T, warmup=100)
    for t in range(T):
        loss = ...; loss.backward()
        optimizer.step()          # optimizer step t runs at base_lr · multiplier(t)
        scheduler.step()
        optimizer.zero_grad()

optimizer step ``t`` (0-based) uses ``base_lr · multiplier(t)`` -- the trainer's convention
(:mod:`trainlab.train.loop` sets ``lr = base_lr · multiplier(t)`` before step ``t``). ``base_lr`` is each
param group's ``lr`` when the scheduler is made (stored as ``initial_lr`` by PyTorch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainlab.schedules.registry import Multiplier, build

if TYPE_CHECKING:
    import torch


def as_lr_scheduler(optimizer: torch.optim.Optimizer, multiplier: Multiplier | str,
                    total_steps: int | None = None, **options: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` driving ``optimizer`` with ``multiplier`` (a ``step -> multiplier`` function), or with
    the registered schedule of that name built for ``total_steps`` with ``options``.

    Call ``scheduler.step()`` after each ``optimizer.step()``; step ``t`` then runs at
    ``base_lr · multiplier(t)``.
    """
    from torch.optim.lr_scheduler import LambdaLR

    if isinstance(multiplier, str):
        if total_steps is None:
            raise ValueError(f"schedule {multiplier!r} by name needs total_steps")
        multiplier = build(multiplier, total_steps, **options)
    elif total_steps is not None or options:
        raise ValueError("total_steps and options apply only to a schedule given by name")
    fn = multiplier
    return LambdaLR(optimizer, lambda step: fn(step))
