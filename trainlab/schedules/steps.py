"""Piecewise-constant schedules: ``step``, ``multistep`` and the ``two_regime`` schedule.

Units are optimizer steps (0-based). A drop "at" step ``m`` applies from step ``m`` on, as PyTorch's
``StepLR``/``MultiStepLR`` apply a milestone ``m`` from epoch ``m`` on. Milestones are absolute steps: the
optional linear warm-up (``(t + 1) / W`` for ``t < W``, see :mod:`.basic`) multiplies the piecewise-constant
value rather than shifting it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal

from trainlab.config import ConfigError, option
from trainlab.schedules.basic import warmup_multiplier
from trainlab.schedules.registry import Multiplier, register
from trainlab.schedules.wsd import SHAPES, _check_warmup


@dataclass(frozen=True)
class StepOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    step_size: int | None = option(None, ge=1, help="steps between drops (default: ceil(steps / 3))")
    gamma: float = option(0.1, gt=0.0, le=1.0, help="factor applied at each drop")


@register("step", options=StepOptions)
def step(opts: StepOptions, total: int) -> Multiplier:
    """Step decay: ``gamma ** floor(t / step_size)`` (PyTorch's ``StepLR``, per step instead of per epoch).

    The classic "divide by 10 when progress stalls" schedule (Krizhevsky, Sutskever & Hinton 2012; He et al.
    2016 use it at fixed steps), here at a fixed period: step ``t`` runs at ``gamma ** floor(t / step_size)``
    (times the warm-up factor while ``t < W``). Units: steps. Defaults: ``gamma = 0.1``,
    ``step_size = ceil(T / 3)`` (two drops in the run), no warm-up; the last step ``T - 1`` runs at
    ``gamma ** floor((T - 1) / step_size)``.
    """
    _check_warmup(opts.warmup, total)
    size = opts.step_size if opts.step_size is not None else max(1, math.ceil(total / 3))

    def f(t: int) -> float:
        return warmup_multiplier(t, opts.warmup) * opts.gamma ** (t // size)

    return f


@dataclass(frozen=True)
class MultiStepOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    milestones: tuple[float, ...] = option(
        (0.5, 0.75), ge=0.0,
        help="steps at which the lr is multiplied by gamma; fractions of the steps if all are < 1")
    gamma: float = option(0.1, gt=0.0, le=1.0, help="factor applied at each milestone")

    def validate(self) -> None:
        if self.milestones and not all(m < 1 for m in self.milestones):
            bad = [m for m in self.milestones if not float(m).is_integer()]
            if bad:
                raise ConfigError("milestones", f"mixes fractions and steps ({bad[0]!r}); give all as fractions "
                                                "of the steps (< 1) or all as whole steps")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError("milestones", f"must be strictly increasing, got {self.milestones!r}")


def milestone_steps(milestones: tuple[float, ...], total: int) -> list[int]:
    """Milestones as steps: ``round(m · T)`` when every milestone is < 1, else the milestones themselves."""
    if milestones and all(m < 1 for m in milestones):
        return [round(m * total) for m in milestones]
    return [int(m) for m in milestones]


@register("multistep", options=MultiStepOptions)
def multistep(opts: MultiStepOptions, total: int) -> Multiplier:
    """Multi-step decay: ``gamma ** (number of milestones <= t)`` (PyTorch's ``MultiStepLR``, per step).

    ``milestones`` are whole steps (``milestones=3000,4500``) or, when *all* are below 1, fractions of the
    run's steps (``milestones=0.5,0.75`` drops at ``round(0.5 T)`` and ``round(0.75 T)``); the value 1 is
    therefore step 1, not the end of the run. Milestones must increase and lie in ``[1, T - 1]`` once
    converted, else ``ConfigError`` on ``schedule.milestones``. Defaults: ``0.5, 0.75`` and ``gamma = 0.1``
    (the CIFAR ResNet recipe of He et al. 2016).
    """
    _check_warmup(opts.warmup, total)
    marks = milestone_steps(opts.milestones, total)
    for m in marks:
        if not 1 <= m <= total - 1:
            raise ConfigError("schedule.milestones", f"milestone at step {m} is outside the run's steps "
                                                     f"1..{total - 1}")
    if len(set(marks)) != len(marks):
        raise ConfigError("schedule.milestones", f"two milestones fall on the same step ({marks}) in {total} steps")

    def f(t: int) -> float:
        return warmup_multiplier(t, opts.warmup) * opts.gamma ** bisect.bisect_right(marks, t)

    return f


@dataclass(frozen=True)
class TwoRegimeOptions:
    warmup: int = option(0, ge=0, help="linear warm-up steps")
    switch_frac: float = option(0.5, ge=0.0, le=1.0, help="fraction of the steps run at the large lr")
    small: float = option(0.1, gt=0.0, le=1.0, help="multiplier at the start of the small-lr phase")
    decay: Literal["constant", "linear", "cosine"] = option(
        "constant", help="shape of the small-lr phase, from `small` towards `final`")
    final: float = option(0.0, ge=0.0, le=1.0, help="multiplier the small-lr phase heads for (unless constant)")

    def validate(self) -> None:
        if self.decay != "constant" and self.final > self.small:
            raise ConfigError("final", f"must be <= small ({self.small}), got {self.final}")


@register("two_regime", options=TwoRegimeOptions)
def two_regime(opts: TwoRegimeOptions, total: int) -> Multiplier:
    """A large-lr phase, then a small-lr phase (Leclerc & Madry 2020).

    Leclerc & Madry 2020, "The Two Regimes of Deep Network Training".

    With ``S = round(switch_frac · T)``::

        t < W        (t + 1) / W
        W <= t < S   1                                     large-step regime
        t >= S       small                                 (decay=constant: the plain two-step schedule)
                     final + (small - final) · shape(q),   q = (t - S) / (T - S), shape linear or cosine

    The paper separates a large-lr regime (good generalisation, noisy) from a small-lr regime (convex-like
    optimisation) and finds the second regime's lr can be tuned, or decayed, independently of the first.
    Defaults: switch at half the run to ``small = 0.1``, constant. ``ConfigError`` on
    ``schedule.switch_frac`` if the switch falls inside the warm-up.
    """
    _check_warmup(opts.warmup, total)
    switch = round(opts.switch_frac * total)
    if switch < opts.warmup:
        raise ConfigError("schedule.switch_frac", f"the switch at step {switch} falls inside the "
                                                  f"{opts.warmup}-step warm-up")
    shape = SHAPES.get(opts.decay)

    def f(t: int) -> float:
        if t < opts.warmup:
            return warmup_multiplier(t, opts.warmup)
        if t < switch:
            return 1.0
        if shape is None:
            return opts.small
        q = min(max((t - switch) / max(total - switch, 1), 0.0), 1.0)
        return opts.final + (opts.small - opts.final) * shape(q)

    return f
