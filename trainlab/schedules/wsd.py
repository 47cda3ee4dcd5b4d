"""Warm-up–stable–decay (``wsd``) and the four-phase ``infinite`` schedule.

Units are optimizer steps; ``T`` is the run's step budget, steps are 0-based, and the warm-up follows the
convention of :mod:`.basic` (multiplier ``(t + 1) / W`` for ``t < W``). Every decay phase of ``D`` steps
starting at step ``S`` uses progress ``q = (t - S) / D``, which is 0 at its first step and reaches 1 at step
``S + D`` -- for a phase that ends the run that is the never-taken step ``T``, as in :mod:`.basic`, so the
last step ``T - 1`` runs slightly above ``final``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from trainlab.config import ConfigError, option
from trainlab.schedules.basic import warmup_multiplier
from trainlab.schedules.registry import Multiplier, register

# Shapes s(q) falling from 1 at q = 0 to 0 at q = 1.
SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda q: 1.0 - q,
    "cosine": lambda q: 0.5 * (1.0 + math.cos(math.pi * q)),
    "1-sqrt": lambda q: 1.0 - math.sqrt(q),
}


def _clip01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def _check_warmup(warmup: int, total: int) -> None:
    if warmup >= total:
        raise ConfigError("schedule.warmup", f"must be smaller than steps ({total}), got {warmup}")


@dataclass(frozen=True)
class WSDOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    decay_frac: float = option(0.2, ge=0.0, le=1.0, help="fraction of the steps spent cooling down (at the end)")
    cooldown: Literal["linear", "cosine", "1-sqrt"] = option("1-sqrt", help="shape of the cooldown (Hägele et al. 2024 recommend 1-sqrt)")
    final: float = option(0.0, ge=0.0, le=1.0, help="multiplier the cooldown heads for (reached at step T)")


@register("wsd", options=WSDOptions)
def wsd(opts: WSDOptions, total: int) -> Multiplier:
    """Warm-up, stable, then a short cooldown at the end (WSD; Hägele et al. 2024).

    Hägele, Bakouch, Kosson, Ben Allal, Von Werra & Jaggi 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations" (after Hu et al. 2024, MiniCPM).

    With ``W = warmup``, cooldown length ``D = round(decay_frac · T)`` starting at ``S = T - D``::

        t < W          (t + 1) / W
        W <= t < S     1
        t >= S         final + (1 - final) · shape(q),   q = (t - S) / D

    ``shape`` is ``1 - q`` (linear), ``(1 + cos πq) / 2`` (cosine) or ``1 - sqrt(q)`` (1-sqrt, the paper's
    best). Defaults: no warm-up, 20% cooldown, 1-sqrt, to 0. The warm-up must end before the cooldown starts
    (``W <= S``), else ``ConfigError`` on ``schedule.decay_frac``.

    Compared with ``pytorch_optimizer.lr_scheduler.get_wsd_schedule(num_warmup_steps=W, num_stable_steps=S-W,
    num_decay_steps=D, min_lr_ratio=final, cooldown_type=...)``: identical for every ``t >= W`` when
    ``final = 0`` (and for cosine with any ``final``). Differences: its warm-up is ``t / W`` (step 0 runs at
    lr 0, peak reached one step later), and its linear and 1-sqrt cooldowns ignore ``min_lr_ratio`` (they
    head for 0 and jump to ``min_lr_ratio`` after the decay) where ours head for ``final``.
    """
    _check_warmup(opts.warmup, total)
    decay = round(opts.decay_frac * total)
    start = total - decay
    if opts.warmup > start:
        raise ConfigError("schedule.decay_frac", f"the cooldown ({decay} of {total} steps) would start at step "
                                                 f"{start}, inside the {opts.warmup}-step warm-up")
    shape = SHAPES[opts.cooldown]

    def f(step: int) -> float:
        if step < opts.warmup:
            return warmup_multiplier(step, opts.warmup)
        if step < start or decay == 0:
            return 1.0
        return opts.final + (1.0 - opts.final) * shape(_clip01((step - start) / decay))

    return f


@dataclass(frozen=True)
class InfiniteOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    cooldown_steps: int | None = option(None, ge=0, help="steps of the cosine cooldown to `constant` "
                                                            "(overrides cooldown_frac)")
    cooldown_frac: float = option(0.1, ge=0.0, le=1.0, help="cooldown length as a fraction of the steps")
    constant: float = option(0.5, gt=0.0, le=1.0, help="multiplier of the constant phase")
    anneal_frac: float = option(0.1, ge=0.0, le=1.0, help="fraction of the steps spent in the final anneal")
    anneal: Literal["exponential", "linear", "cosine"] = option(
        "exponential", help="shape of the final anneal from `constant` to `final` (the paper's is exponential)")
    final: float = option(0.1, ge=0.0, le=1.0, help="multiplier the anneal heads for (reached at step T)")

    def validate(self) -> None:
        if self.final > self.constant:
            raise ConfigError("final", f"must be <= constant ({self.constant}), got {self.final}")
        if self.anneal == "exponential" and self.final <= 0.0:
            raise ConfigError("final", "must be > 0 for the exponential anneal (use anneal=linear or cosine "
                                       "to anneal to 0)")


@register("infinite", options=InfiniteOptions)
def infinite(opts: InfiniteOptions, total: int) -> Multiplier:
    """Warm-up, cosine cooldown to a constant, constant, final anneal (Ibrahim et al. 2024).

    The "infinite" schedule of Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train
    Large Language Models", studied further by Singh et al. 2025, "Beyond Cosine Decay: On the effectiveness
    of Infinite Learning Rate Schedule for Continual Pre-training".

    Four phases with ``W = warmup``, ``C = cooldown_steps`` (default ``round(cooldown_frac · T)``),
    ``A = round(anneal_frac · T)`` anneal steps starting at ``N = T - A``, ``c = constant``, ``f = final``::

        t < W            (t + 1) / W                                   linear warm-up
        W <= t < W + C   c + (1 - c) · (1 + cos(π (t - W) / C)) / 2     cosine cooldown to c
        W + C <= t < N   c                                             constant (can run indefinitely)
        t >= N           c · (f / c) ** q,  q = (t - N) / A             exponential anneal (paper)
                         or f + (c - f) · shape(q) for anneal=linear|cosine

    The constant phase does not depend on ``T``: a run can be continued (new data) from any checkpoint taken
    there, and annealed whenever a finished model is wanted. Defaults (ours; the paper fixes absolute
    learning rates): no warm-up, 10% cooldown to 0.5, 10% exponential anneal to 0.1 (the common
    ``η_min = η_max / 10``). ``ConfigError`` unless ``W + C <= N``.
    """
    _check_warmup(opts.warmup, total)
    cool = opts.cooldown_steps if opts.cooldown_steps is not None else round(opts.cooldown_frac * total)
    anneal = round(opts.anneal_frac * total)
    start = total - anneal
    if opts.warmup + cool > start:
        key = "schedule.cooldown_steps" if opts.cooldown_steps is not None else "schedule.cooldown_frac"
        raise ConfigError(key, f"warm-up ({opts.warmup}) + cooldown ({cool}) + anneal ({anneal}) steps exceed "
                               f"steps ({total})")
    c, fin = opts.constant, opts.final
    shape = SHAPES.get(opts.anneal)

    def f(step: int) -> float:
        if step < opts.warmup:
            return warmup_multiplier(step, opts.warmup)
        if step < opts.warmup + cool:
            return c + (1.0 - c) * SHAPES["cosine"]((step - opts.warmup) / cool)
        if step < start or anneal == 0:
            return c
        q = _clip01((step - start) / anneal)
        if shape is None:  # exponential
            return c * (fin / c) ** q
        return fin + (c - fin) * shape(q)

    return f
