"""Batches as a pure function of (seed, step): resuming needs no sampler state.

Minibatches are drawn without replacement within an epoch: epoch ``e`` uses the permutation of a generator
seeded from ``(seed, e)``; step ``s`` takes the ``s mod steps_per_epoch``-th slice of it (the last partial
batch of an epoch is dropped). With ``batch_size = 0`` (or at least the data size) every step is full batch.
Under DDP each process takes its contiguous share of the global batch (``tensor_split``), so any number of
processes sees exactly the same global batch.

A curriculum (``data.order=curriculum``, :class:`PacedSampler`) draws each step's batch from a growing prefix of
score-ordered rows instead, again as a pure function of (seed, step).
"""

from __future__ import annotations

import math

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


class PacedSampler(BatchSampler):
    """Curriculum batches with linear pacing (Wu, Dyer & Neyshabur 2021, "When Do Curricula Work?").

    The ``n`` training rows are in curriculum order (easy to hard, or hard to easy: :mod:`trainlab.train.diet`).
    Step ``t`` (0-based, of ``steps``) may use the first ``n(t)`` rows::

        n(t) = round(n * min(1, start + (1 - start) * t / (pace * steps)))   (at least one batch, at most n)

    -- ``start`` is Wu et al.'s ``b`` (the fraction available at step 0), ``pace`` their ``a`` (the fraction of
    the steps after which every row is available). Its batch is ``batch_size`` rows drawn uniformly without
    replacement from those ``n(t)``, by a generator seeded from ``(seed, t)`` (so batches are independent across
    steps, also once every row is available: no epochs). Full batch (``batch_size`` 0 or >= ``n``): the batch is
    all ``n(t)`` rows. Under DDP each process takes its contiguous share, as in :class:`BatchSampler`.
    """

    def __init__(self, n: int, batch_size: int, seed: int, steps: int, start: float, pace: float, rank: int = 0,
                 world_size: int = 1):
        super().__init__(n, batch_size, seed, rank, world_size)
        if not (0 < start <= 1 and pace > 0 and steps >= 1):
            raise ValueError(f"need 0 < start <= 1, pace > 0 and steps >= 1; got {start}, {pace}, {steps}")
        self.steps, self.start, self.pace = steps, start, pace

    def available(self, step: int) -> int:
        """``n(step)``: how many of the first rows step ``step`` draws from."""
        fraction = min(1.0, self.start + (1.0 - self.start) * step / (self.pace * self.steps))
        least = self.world_size if self.full_batch else self.batch_size  # a batch, and a share for every process
        return min(self.n, max(least, math.floor(fraction * self.n + 0.5)))

    def global_indices(self, step: int) -> Tensor:
        m = self.available(step)
        if self.full_batch:
            return torch.arange(m)
        # (mod 2^63: a 32-bit seed times 1_000_003 plus a step must still fit the generator's 64-bit seed)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % 2**63)
        return torch.randperm(m, generator=gen)[: self.batch_size]
