"""Constant, cosine and linear-decay schedules, each with an optional linear warm-up.

Warm-up convention (stated because timm's was off by one): with ``warmup = W > 0`` the multiplier before
step ``t < W`` is ``(t + 1) / W``, so the first step already moves (multiplier ``1/W``) and step ``W - 1``
runs at the peak. After warm-up, progress ``p = (t - W) / (T - W)`` runs from 0 at the first post-warm-up
step towards 1 at the (never taken) step ``T``.

Linear decay ``1 - p`` is the worst-case-optimal last-iterate schedule of Defazio et al. (2023), "When, Why
and How Much? Adaptive Learning Rate Scheduling by Refinement".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainlab.config import ConfigError, option
from trainlab.schedules.registry import Multiplier, register


@dataclass(frozen=True)
class WarmupOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")


@dataclass(frozen=True)
class DecayOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    final: float = option(0.0, ge=0.0, le=1.0, help="multiplier reached at the last step")


def warmup_multiplier(step: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def _progress(step: int, warmup: int, total: int) -> float:
    if total <= warmup:
        raise ConfigError("schedule.warmup", f"must be smaller than steps ({total}), got {warmup}")
    return min(max((step - warmup) / (total - warmup), 0.0), 1.0)


@register("constant", options=WarmupOptions)
def constant(opts: WarmupOptions, total: int) -> Multiplier:
    """Constant learning rate after an optional linear warm-up."""
    if opts.warmup and opts.warmup >= total:
        raise ConfigError("schedule.warmup", f"must be smaller than steps ({total}), got {opts.warmup}")
    return lambda step: warmup_multiplier(step, opts.warmup)


@register("cosine", options=DecayOptions)
def cosine(opts: DecayOptions, total: int) -> Multiplier:
    """Linear warm-up, then half-cosine decay from 1 to ``final``."""
    _progress(0, opts.warmup, total)

    def f(step: int) -> float:
        if step < opts.warmup:
            return warmup_multiplier(step, opts.warmup)
        p = _progress(step, opts.warmup, total)
        return opts.final + (1 - opts.final) * 0.5 * (1 + math.cos(math.pi * p))

    return f


@register("linear", options=DecayOptions)
def linear(opts: DecayOptions, total: int) -> Multiplier:
    """Linear warm-up, then linear decay from 1 to ``final`` (Defazio et al. 2023)."""
    _progress(0, opts.warmup, total)

    def f(step: int) -> float:
        if step < opts.warmup:
            return warmup_multiplier(step, opts.warmup)
        return 1 - (1 - opts.final) * _progress(step, opts.warmup, total)

    return f
