"""Batches as a pure function of (seed, step): resuming needs no sampler state.

Minibatches are drawn without replacement within an epoch: epoch ``e`` uses the permutation of a generator
seeded from ``(seed, e)``; step ``s`` takes the ``s mod steps_per_epoch``-th slice of it (the last partial
batch of an epoch is dropped). With ``batch_size = 0`` (or at least the data size) every step is full batch.
Under DDP each process takes its contiguous share of the global batch (``tensor_split``), so any number of
processes sees exactly the same global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BatchSampler:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.batch_size = n if batch_size <= 0 or batch_size >= n else batch_size
        if self.batch_size < world_size:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the number of processes {world_size}")
        self.steps_per_epoch = n // self.batch_size
        self._epoch, self._perm = -1, torch.arange(n)

    @property
    def full_batch(self) -> bool:
        return self.batch_size == self.n

    def global_indices(self, step: int) -> Tensor:
        if self.full_batch:
            return self._perm
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=gen), epoch
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def indices(self, step: int) -> Tensor:
        """This process's share of the global batch of ``step``."""
        idx = self.global_indices(step)
        return idx if self.world_size == 1 else torch.tensor_split(idx, self.world_size)[self.rank]
