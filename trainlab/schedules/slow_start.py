"""The "slow start, fast decay" schedule of adversarial fine-tuning (Jeddi, Shafiee & Wong 2020, "A Simple
Fine-tuning Is All You Need: Towards Robust Deep Learning Via Adversarial Fine-tuning").

The paper fine-tunes a pre-trained model with a short run of PGD adversarial training whose learning rate
starts from about zero, rises to its peak over a short first part of the run, then decays fast. Its abstract
names the strategy but gives no formula, length, peak or warm-up fraction; :func:`slow_start_fast_decay` fixes
one shape and says which parts are trainlab's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainlab.config import option
from trainlab.schedules.basic import warmup_multiplier
from trainlab.schedules.registry import Multiplier, register
from trainlab.schedules.wsd import _check_warmup

WARMUP_FRACTION = 0.1  # of the run's steps, when schedule.warmup is not given (trainlab's choice, unverified)


@dataclass(frozen=True)
class SlowStartOptions:
    warmup: int | None = option(None, ge=0, help="linear warm-up steps from ~0 to the peak (default: 10% of the "
                                                 "steps, at least 1)")
    final: float = option(0.01, gt=0.0, le=1.0, help="multiplier the exponential decay heads for (reached at the "
                                                     "never-taken step T)")


def warmup_steps(warmup: int | None, total: int) -> int:
    """``warmup`` or, when unset, :data:`WARMUP_FRACTION` of ``total`` (rounded; at least 1 step and at most
    ``total - 1``, so that a one-step run is a valid run at the peak)."""
    return warmup if warmup is not None else min(max(1, round(WARMUP_FRACTION * total)), total - 1)


@register("slow_start_fast_decay", options=SlowStartOptions, warms_up=True)
def slow_start_fast_decay(opts: SlowStartOptions, total: int) -> Multiplier:
    """Slow start, fast decay (Jeddi et al. 2020): a linear warm-up from ~0, then exponential decay to ``final``.

    For adversarial fine-tuning of a pre-trained model (``init_from=RUN_DIR loss.adversarial=pgd``). Units are
    steps, 0-based; ``T`` is the run's step budget, ``W`` the warm-up::

        t < W     (t + 1) / W                  (the warm-up convention of trainlab.schedules.basic: 1/W at step 0)
        t >= W    final ** q,   q = (t - W) / (T - W)

    so the peak runs at step ``W - 1`` and ``W``, the rate halves every ``(T - W)·ln 2 / ln(1/final)`` steps
    (about 15% of the decay with the default ``final = 0.01``: ten times lower by its middle) and the last step
    ``T - 1`` runs slightly above ``final``. Defaults: ``W = round(0.1·T)`` (at least 1, below ``T``), ``final = 0.01``;
    ``warmup=0`` starts at the peak. ``W >= T`` is a ``ConfigError`` on ``schedule.warmup``.

    What the paper leaves unverified here (only its abstract was available): the warm-up fraction, the decay's
    form (exponential is trainlab's reading of "fast decay"), the peak lr (``optimizer.lr``), its floor and the
    fine-tuning length; the abstract reports 8-10x less compute than PGD-AT from scratch on CIFAR-10/100 and
    ImageNet.
    """
    warmup = warmup_steps(opts.warmup, total)
    _check_warmup(warmup, total)

    def f(step: int) -> float:
        if step < warmup:
            return warmup_multiplier(step, warmup)
        return opts.final ** ((step - warmup) / (total - warmup))

    return f
