"""Batches are a pure function of (seed, step); DDP shares partition the global batch."""

import torch

from trainlab.train.data import BatchSampler


def test_epochs_cover_every_example_once():
    sampler = BatchSampler(n=50, batch_size=10, seed=3)
    epoch = torch.cat([sampler.indices(s) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(50))
    assert not torch.equal(torch.cat([sampler.indices(s) for s in range(5, 10)]), epoch)  # reshuffled


def test_same_step_same_batch_in_any_order():
    a, b = BatchSampler(100, 16, seed=1), BatchSampler(100, 16, seed=1)
    forward = [a.indices(s) for s in range(20)]
    backward = [b.indices(s) for s in reversed(range(20))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    assert not torch.equal(BatchSampler(100, 16, seed=2).indices(0), forward[0])


def test_shares_partition_the_global_batch():
    shares = [BatchSampler(100, 15, seed=0, rank=r, world_size=2).indices(4) for r in range(2)]
    assert torch.equal(torch.cat(shares), BatchSampler(100, 15, seed=0).indices(4))


def test_full_batch():
    sampler = BatchSampler(7, 0, seed=0)
    assert sampler.full_batch and torch.equal(sampler.indices(5), torch.arange(7))
    assert BatchSampler(7, 100, seed=0).full_batch
