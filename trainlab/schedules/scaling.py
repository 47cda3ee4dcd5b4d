"""Learning-rate scaling rules for a change of batch size.

- ``linear`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"): multiply
  the lr by ``new_batch / base_batch``. Keeps the expected update per example fixed for SGD while the lr is
  small enough; Goyal et al. pair it with a gradual warm-up and report it breaking down beyond ~8k images.
- ``sqrt`` (Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks"; Hoffer,
  Hubara & Soudry 2017, "Train longer, generalize better"): multiply by ``sqrt(new_batch / base_batch)``,
  which keeps the variance of the update fixed; the usual rule for Adam-like optimizers.
"""

from __future__ import annotations

import math
from typing import Literal

RULES = ("linear", "sqrt")


def scale_lr(lr: float, base_batch: int, new_batch: int, rule: Literal["linear", "sqrt"] = "linear") -> float:
    """The learning rate for ``new_batch`` examples per step, given ``lr`` tuned at ``base_batch``.

    ``rule="linear"``: ``lr · new/base`` (Goyal et al. 2017); ``rule="sqrt"``: ``lr · sqrt(new/base)``
    (Krizhevsky 2014, Hoffer et al. 2017). Batch sizes are examples per optimizer step over all processes.
    Raises ``ValueError`` for non-positive batch sizes, a negative lr or an unknown rule.
    """
    if base_batch <= 0 or new_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got base_batch={base_batch}, new_batch={new_batch}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    ratio = new_batch / base_batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")
