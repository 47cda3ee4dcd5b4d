"""Large-batch rules: how the learning rate and the step budget follow the batch size (the ``batch`` section).

A recipe's learning rate and step budget are tuned for one batch size, ``batch.base`` (default: the workload's
default batch size). Training at another batch size ``B`` with ``batch.lr_rule`` and ``batch.steps_rule``::

    lr_rule    none     lr                              (as configured)
               linear   lr · B/B0                        (Granziol et al. 2022: the largest stable lr of SGD grows
                                                         linearly with B; Goyal et al. 2017's linear scaling rule)
               sqrt     lr · √(B/B0)                     (Hoffer et al. 2017 for SGD, keeping the update's noise
                                                         covariance; Granziol et al. 2022: adaptive optimizers
                                                         such as Adam)
    steps_rule iterations  the step budget as at B0      (Hoffer et al.'s "regime adaptation": as many updates as the
                                                         small batch took, i.e. B/B0 times the epochs)
               epochs      budget · B0/B, rounded        (the same epochs as at B0: fewer updates, the setting of the
                                                         large-batch "generalization gap")

``iterations`` is what trainlab always did (steps count updates), so the defaults (``none``, ``iterations``) leave
every run as it was. Units: batch sizes in examples over all processes, as ``batch_size``.

Where each is applied (so a saved ``config.yaml`` resolves to the same run again): the lr factor multiplies the
base lrs when the run is built (:func:`lr_factor`; ``Training.base_lrs``, so every lr the run reports includes
it); the epochs rule scales the *workload's* step budget when ``steps`` is not given (:func:`scaled_steps`). An
explicit ``steps=N`` is taken as is -- which is also how a saved config, whose ``steps`` is resolved, stays the
same run.
"""

from __future__ import annotations

import math
from typing import Literal

LrRule = Literal["none", "linear", "sqrt"]
StepsRule = Literal["iterations", "epochs"]


def lr_factor(rule: LrRule, batch: int, base: int) -> float:
    """The learning-rate multiplier of ``rule`` for batch ``batch`` against ``base`` (both > 0 examples)."""
    if batch <= 0 or base <= 0:
        raise ValueError(f"batch sizes must be > 0 examples, got batch={batch}, base={base}")
    ratio = batch / base
    if rule == "none":
        return 1.0
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    raise ValueError(f"lr_rule must be none, linear or sqrt, got {rule!r}")


def scaled_steps(rule: StepsRule, budget: int, batch: int, base: int) -> int:
    """The step budget ``budget`` (tuned at ``base``) for batch ``batch``: unchanged (``iterations``) or
    ``round(budget · base / batch)`` and at least 1 (``epochs``)."""
    if batch <= 0 or base <= 0:
        raise ValueError(f"batch sizes must be > 0 examples, got batch={batch}, base={base}")
    if rule == "iterations":
        return budget
    if rule == "epochs":
        return max(1, round(budget * base / batch))
    raise ValueError(f"steps_rule must be iterations or epochs, got {rule!r}")


def run_lr_factor(rule: LrRule, base: int | None, batch_size: int, default_batch_size: int, n_train: int) -> float:
    """The lr factor of a run: ``batch_size`` examples per step (0: the full training set of ``n_train``) against
    ``base`` (None: the workload's ``default_batch_size``, 0 meaning its full training set)."""
    batch = batch_size or n_train
    reference = base if base is not None else (default_batch_size or n_train)
    return lr_factor(rule, batch, reference)
