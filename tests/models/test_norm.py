"""Ghost batch normalisation (Hoffer et al. 2017) against plain ``torch.nn.BatchNorm`` and a manual computation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainlab.config import ConfigError
from trainlab.models.norm import GhostBatchNorm1d, GhostBatchNorm2d

DT = torch.float64

# (ghost class, plain class, shape of one example)
KINDS = [(GhostBatchNorm1d, nn.BatchNorm1d, (3,)), (GhostBatchNorm1d, nn.BatchNorm1d, (3, 5)),
         (GhostBatchNorm2d, nn.BatchNorm2d, (3, 4, 2))]
STATS = ("running_mean", "running_var", "num_batches_tracked")


def pair(ghost_cls, plain_cls, ghost_batch: int, **kwargs) -> tuple[nn.Module, nn.Module]:
    """A ghost and a plain BatchNorm with the same non-trivial gains, shifts and running statistics."""
    torch.manual_seed(0)
    plain = plain_cls(3, **kwargs).to(DT)
    with torch.no_grad():
        if plain.affine:
            plain.weight.normal_()
            plain.bias.normal_()
        if plain.track_running_stats:
            plain.running_mean.normal_()
            plain.running_var.uniform_(0.5, 2.0)
    ghost = ghost_cls(3, ghost_batch, **kwargs).to(DT)
    ghost.load_state_dict(plain.state_dict())
    return ghost, plain


def run(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and parameter gradients of ``(module(x) * upstream).sum()``."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * upstream).sum().backward()
    grads = tuple(p.grad.clone() for p in module.parameters())
    module.zero_grad()
    return (out.detach(), x.grad, *grads)


def inputs(n: int, shape: tuple[int, ...], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, dtype=DT) * 2 + 0.7
    return x, torch.randn((n, *shape), generator=g, dtype=DT)


@pytest.mark.parametrize("ghost_cls,plain_cls,shape", KINDS)
@pytest.mark.parametrize("extra", [0, 5])
def test_one_ghost_batch_is_batchnorm_exactly(ghost_cls, plain_cls, shape, extra):
    n = 8
    ghost, plain = pair(ghost_cls, plain_cls, ghost_batch=n + extra)
    for step in range(3):  # running statistics and num_batches_tracked over several steps
        x, upstream = inputs(n, shape, seed=step)
        for a, b in zip(run(ghost, x, upstream), run(plain, x, upstream)):
            assert torch.equal(a, b)
        for key in STATS:
            assert torch.equal(getattr(ghost, key), getattr(plain, key))
    assert int(ghost.num_batches_tracked) == 3


@pytest.mark.parametrize("ghost_cls,plain_cls,shape", KINDS)
@pytest.mark.parametrize("momentum", [0.1, None])  # exponential and cumulative (counts ghost batches) averages
def test_ghost_batches_are_sequential_batchnorm_calls(ghost_cls, plain_cls, shape, momentum):
    n, g = 10, 4  # chunks of 4, 4 and a remainder of 2
    ghost, plain = pair(ghost_cls, plain_cls, ghost_batch=g, momentum=momentum)
    for step in range(2):
        x, upstream = inputs(n, shape, seed=step)
        xr = x.clone().requires_grad_(True)
        reference = torch.cat([plain(xr[i:i + g]) for i in range(0, n, g)])  # torch's BatchNorm per chunk, in order
        (reference * upstream).sum().backward()
        expected = (reference.detach(), xr.grad, *(p.grad for p in plain.parameters()))
        for a, b in zip(run(ghost, x, upstream), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        plain.zero_grad()
        for key in STATS:
            torch.testing.assert_close(getattr(ghost, key), getattr(plain, key), rtol=0, atol=1e-12)
    assert int(ghost.num_batches_tracked) == 2 * 3  # one per ghost batch


def test_ghost_batch_output_and_running_statistics_by_hand():
    ghost, _ = pair(GhostBatchNorm1d, nn.BatchNorm1d, ghost_batch=3)
    w, b = ghost.weight.detach().clone(), ghost.bias.detach().clone()
    mean0, var0 = ghost.running_mean.clone(), ghost.running_var.clone()
    x, _ = inputs(8, (3,))  # ghost batches of 3, 3 and the remainder 2
    with torch.no_grad():
        out = ghost(x)
    running_mean, running_var = mean0.clone(), var0.clone()
    for lo, hi in ((0, 3), (3, 6), (6, 8)):
        chunk = x[lo:hi]
        mean, var = chunk.mean(0), chunk.var(0, unbiased=False)
        torch.testing.assert_close(out[lo:hi], (chunk - mean) / torch.sqrt(var + 1e-5) * w + b)
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * chunk.var(0, unbiased=True)  # unbiased, as BatchNorm keeps it
    torch.testing.assert_close(ghost.running_mean, running_mean)
    torch.testing.assert_close(ghost.running_var, running_var)
    # and it is not whole-batch BatchNorm: the chunks' own statistics differ from the batch's
    whole = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) * w + b
    assert float((out - whole).abs().max()) > 0.05


@pytest.mark.parametrize("ghost_cls,plain_cls,shape", KINDS)
def test_eval_mode_is_batchnorm_with_running_statistics(ghost_cls, plain_cls, shape):
    ghost, plain = pair(ghost_cls, plain_cls, ghost_batch=2)
    ghost.eval()
    plain.eval()
    x, upstream = inputs(9, shape)
    before = {k: getattr(ghost, k).clone() for k in STATS}
    for a, b in zip(run(ghost, x, upstream), run(plain, x, upstream)):
        assert torch.equal(a, b)
    for key in STATS:
        assert torch.equal(getattr(ghost, key), before[key])


def test_without_running_statistics_eval_still_uses_ghost_batches():
    # BatchNorm without running statistics normalises with batch statistics in eval mode too; so do ghost batches
    ghost, plain = pair(GhostBatchNorm1d, nn.BatchNorm1d, ghost_batch=4, track_running_stats=False)
    ghost.eval()
    plain.eval()
    x, _ = inputs(8, (3,))
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), torch.cat([plain(x[:4]), plain(x[4:])]))


@pytest.mark.parametrize("ghost_cls,plain_cls,shape", KINDS)
def test_state_dict_keeps_batchnorm_keys(ghost_cls, plain_cls, shape):
    ghost, plain = pair(ghost_cls, plain_cls, ghost_batch=4)
    assert list(ghost.state_dict()) == list(plain.state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    plain.load_state_dict(copy.deepcopy(ghost.state_dict()))  # strict, both ways
    assert isinstance(ghost, plain_cls)  # code that treats BatchNorm by isinstance keeps doing so
    assert "ghost_batch=4" in repr(ghost)


def test_remainder_of_one_example():
    ghost, _ = pair(GhostBatchNorm1d, nn.BatchNorm1d, ghost_batch=4)
    with pytest.raises(ValueError) as err:
        ghost(torch.randn(9, 3, dtype=DT))
    assert "\n" not in str(err.value) and "ghost_batch=4" in str(err.value)
    assert isinstance(err.value, ConfigError) and err.value.key == "model.ghost_batch"  # the CLI's one-line error
    # with positions, one example still has several values per channel: a valid ghost batch of its own
    ghost, plain = pair(GhostBatchNorm1d, nn.BatchNorm1d, ghost_batch=4)
    x = torch.randn(9, 3, 5, dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), torch.cat([plain(x[:4]), plain(x[4:8]), plain(x[8:])]))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_ghost_batch(bad):
    with pytest.raises(ValueError, match="ghost_batch"):
        GhostBatchNorm1d(3, bad)
