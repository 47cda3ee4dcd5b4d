"""Ghost batch normalisation: BatchNorm whose training statistics come from small "ghost" batches.

Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing the generalization gap in large batch
training of neural networks" (reference code: eladhoffer/bigBatch): with a large batch, BatchNorm still
normalises with the statistics of ghost batches of ``ghost_batch`` examples (128 in the paper), keeping the
noise of small-batch statistics; the loss and its gradient remain those of the whole batch.

:class:`GhostBatchNorm1d` / :class:`GhostBatchNorm2d` are ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` (same arguments
and defaults, plus ``ghost_batch``) with one change, made wherever BatchNorm normalises with batch statistics
(training mode, or eval mode without running statistics):

* **Ghost batches.** The batch is cut in order into ``ghost_batch``-example chunks (``x.split(ghost_batch)``);
  the remainder -- the last ``N mod ghost_batch`` examples -- forms its own, smaller ghost batch, as in Hoffer et
  al.'s code. Each chunk is normalised with its own mean and biased variance; the outputs are concatenated in the
  original order.
* **Running statistics.** Updated once per ghost batch, in order, exactly as calling the ``nn.BatchNorm`` module
  on each chunk in turn would: ``running ← (1 − momentum)·running + momentum·stat`` with the chunk's mean and
  *unbiased* variance, and ``num_batches_tracked`` counts ghost batches (so ``momentum=None``, the cumulative
  average, averages over ghost batches). A batch of ``N`` examples therefore moves them ``ceil(N/ghost_batch)``
  times; the default momentum (0.1) is per ghost batch.

In eval mode with running statistics it *is* BatchNorm. With ``ghost_batch ≥ N`` the whole batch is one ghost
batch, and the outputs, gradients and running statistics equal ``nn.BatchNorm``'s exactly (the same code runs).
Parameters and buffers are BatchNorm's (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so checkpoints keep BatchNorm's format; ``ghost_batch`` is a hyperparameter, not state.

A ghost batch needs more than one value per channel: a remainder of one example in a 2-D ``(N, C)`` input is
refused with a one-line :class:`~trainlab.config.ConfigError` (a ``ValueError``) naming ``model.ghost_batch``
(choose a batch size with another remainder). Under data parallelism
each process cuts its own share of the batch, as ordinary BatchNorm normalises per process.

Units: ``ghost_batch`` is a number of examples (≥ 1). COST: ``ceil(N/ghost_batch)`` BatchNorm calls per
training forward instead of one (the same arithmetic, more kernel launches).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainlab.config import ConfigError


class _GhostBatchNorm(_BatchNorm):
    """The shared forward of :class:`GhostBatchNorm1d` and :class:`GhostBatchNorm2d` (module doc)."""

    def __init__(self, num_features: int, ghost_batch: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if isinstance(ghost_batch, bool) or not isinstance(ghost_batch, int) or ghost_batch < 1:
            raise ValueError(f"ghost_batch must be an integer >= 1 (examples per ghost batch), got {ghost_batch!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.ghost_batch = ghost_batch

    def forward(self, input: Tensor) -> Tensor:
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_statistics or input.size(0) <= self.ghost_batch:
            return super().forward(input)  # BatchNorm itself: running statistics, or one ghost batch
        self._check_input_dim(input)
        chunks = input.split(self.ghost_batch)
        last = chunks[-1]
        if last.numel() == last.size(1):  # BatchNorm would fail deep inside; a user's choice of sizes, so say which
            raise ConfigError("model.ghost_batch",
                              f"a batch of {input.size(0)} examples leaves a last ghost batch of 1 example "
                              f"(ghost_batch={self.ghost_batch}), which has one value per channel; use a batch size "
                              f"whose remainder mod ghost_batch is not 1")
        # one BatchNorm call per chunk, in order: the running statistics move exactly as sequential calls move them
        batchnorm = super().forward
        return torch.cat([batchnorm(chunk) for chunk in chunks], dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch={self.ghost_batch}"


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over ``(N, C)`` or ``(N, C, L)`` with statistics per ghost batch of ``ghost_batch``
    examples in training (Hoffer et al. 2017; module doc). Defaults as BatchNorm: eps 1e-5, momentum 0.1 (per
    ghost batch), affine, running statistics tracked."""


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over ``(N, C, H, W)`` with statistics per ghost batch of ``ghost_batch`` examples in
    training (Hoffer et al. 2017; module doc). Defaults as BatchNorm: eps 1e-5, momentum 0.1 (per ghost batch),
    affine, running statistics tracked."""


def require_batchnorm(ghost_batch: int, batchnorm: bool) -> None:
    """The models' option check: ``ghost_batch > 0`` without ``batchnorm`` is a one-line :class:`ConfigError`
    naming ``model.ghost_batch`` (there would be no BatchNorm statistics to split)."""
    if ghost_batch > 0 and not batchnorm:
        raise ConfigError("ghost_batch", f"{ghost_batch} needs model.batchnorm=true (ghost batch norm splits the "
                                         f"statistics of BatchNorm layers; without batchnorm there are none)")
