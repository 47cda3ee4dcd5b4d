"""REX: the rational "reflected exponential" decay of Chen et al. (2022), "REX: Revisiting Budgeted Training
with an Improved Schedule" (MLSys 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from trainlab.config import option
from trainlab.schedules.basic import _progress, warmup_multiplier
from trainlab.schedules.registry import Multiplier, register


@dataclass(frozen=True)
class RexOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    final: float = option(0.0, ge=0.0, le=1.0, help="multiplier approached at step T (eta_min / eta_max)")


def rex_shape(p: float) -> float:
    """``(1 - p) / (1 - p / 2)``: 1 at ``p = 0``, 0 at ``p = 1``; above linear decay in between."""
    return (1.0 - p) / (1.0 - p / 2.0)


@register("rex", options=RexOptions)
def rex(opts: RexOptions, total: int) -> Multiplier:
    """REX decay (Chen et al. 2022): ``final + (1 - final) · (1 - p) / (1 - p/2)``.

    Units are steps. Without warm-up ``p = t / T`` (the paper's formula, ``η_t = η_0 (1 - t/T) /
    (1/2 + (1 - t/T)/2)``); with ``warmup = W`` the warm-up is ``(t + 1) / W`` and then
    ``p = (t - W) / (T - W)``, as in :mod:`.basic`. The last step ``T - 1`` runs at
    ``final + (1 - final) · 2 / (T + 1)``; ``p = 1`` is the never-taken step ``T``. Defaults: no warm-up,
    ``final = 0`` (the paper has no floor; ``final`` is ``min_lr / max_lr`` of pytorch_optimizer).

    Compared with ``pytorch_optimizer.lr_scheduler.REXScheduler(optimizer, total_steps=T, max_lr=base,
    min_lr=final · base)`` (version 4.1): in the usual PyTorch order (``optimizer.step(); scheduler.step()``)
    optimizer step ``t >= 1`` runs at exactly ``base · rex(t)`` here (tested), but step 0 runs at ``min_lr``
    (0 by default) instead of ``base``: the ``LRScheduler`` constructor's initial ``step()`` advances its
    counter to 1 and its ``init_lr`` then writes ``min_lr`` into the optimizer. It also sets absolute
    learning rates (ignoring the optimizer's ``lr``) and has no warm-up.
    """
    _progress(0, opts.warmup, total)  # ConfigError on schedule.warmup unless warmup < steps

    def f(step: int) -> float:
        if step < opts.warmup:
            return warmup_multiplier(step, opts.warmup)
        return opts.final + (1.0 - opts.final) * rex_shape(_progress(step, opts.warmup, total))

    return f
