"""The training step's bookkeeping, kept cheap without changing a number: the parameter list kept at build time
(trace and clipping read it instead of walking the modules) and one draw of the batch per step with one process."""

import dataclasses

import pytest
import torch
from torch import nn

from trainlab.distributed.env import DistEnv
from trainlab.distributed.strategy import STRATEGIES
from trainlab.train import loop
from trainlab.train.config import parse_overrides, resolve
from trainlab.train.data import BatchSampler, PacedSampler
from trainlab.train.state import TrainState
from trainlab.train.training import Training, build_training

TINY = ["workload.p=23", "steps=60", "eval_every=20", "model.width=64", "optimizer.lr=1e-2"]


def _training(*extra: str) -> Training:
    return build_training(resolve([parse_overrides([*TINY, *extra])]), DistEnv())


def _dense_norm(model: nn.Module) -> torch.Tensor:
    """The global gradient norm the straightforward way: one vector of every gradient."""
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))


def _refuse_walks(m: pytest.MonkeyPatch) -> None:
    """Make walking any module's parameters fail the test (until ``m`` is undone)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.parameters() walked during a step")

    m.setattr(nn.Module, "parameters", refuse)
    m.setattr(nn.Module, "named_parameters", refuse)


def test_the_parameter_list_is_every_parameter_in_model_order():
    t = _training()
    walked = list(t.model.parameters())
    assert t.param_list is not None and len(t.param_list) == len(walked)
    assert all(a is b for a, b in zip(t.param_list, walked))  # the same tensors, not copies


def test_trace_norm_reads_the_kept_list_and_equals_the_walked_and_dense_norms(monkeypatch):
    t = _training()
    s = TrainState.fresh(t)
    loop.train_step(t, s)
    with monkeypatch.context() as m:
        _refuse_walks(m)
        for _ in range(3):
            loop.train_step(t, s)
    step, _, _, norm = s.trace[-1]
    assert step == 3
    assert torch.equal(norm, loop.global_grad_norm(t.model))  # bit-identical to walking the module tree
    torch.testing.assert_close(norm, _dense_norm(t.model), rtol=1e-6, atol=0)


def test_clipping_reads_the_kept_list(monkeypatch):
    clip = 1e-3  # far under this model's gradient norm: every step clips
    t = _training(f"grad_clip={clip}")
    s = TrainState.fresh(t)
    loop.train_step(t, s)
    with monkeypatch.context() as m:
        _refuse_walks(m)
        loop.train_step(t, s)
    assert float(s.grad_norm) > 10 * clip  # the norm before clipping
    # the gradients the optimizer stepped with (left on the parameters) were scaled to the clip
    torch.testing.assert_close(float(_dense_norm(t.model)), clip, rtol=1e-4, atol=0)
    assert torch.equal(s.trace[-1][3], s.grad_norm)


def test_a_strategy_that_swaps_parameters_is_walked_every_step(monkeypatch):
    assert STRATEGIES.get("fsdp").factory.swaps_parameters
    assert not any(STRATEGIES.get(name).factory.swaps_parameters for name in ("ddp", "zero1", "diloco", "gossip"))
    t = _training("dist=fsdp")  # one process: FSDP2 on a group of one
    try:
        assert t.param_list is None
        s = TrainState.fresh(t)
        loop.train_step(t, s)
        walks = []
        real = nn.Module.parameters

        def counting(self, *args, **kwargs):
            walks.append(type(self).__name__)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(nn.Module, "parameters", counting)
        loop.train_step(t, s)
        monkeypatch.setattr(nn.Module, "parameters", real)
        assert walks  # the trace walked the sharded model
        assert torch.equal(s.trace[-1][3], loop.global_grad_norm(t.model))
    finally:
        t.strategy.finish()


def test_one_process_draws_each_batch_once(monkeypatch):
    t = _training()
    real, drawn = t.sampler.global_indices, []

    def counting(step):
        drawn.append(step)
        return real(step)

    monkeypatch.setattr(t.sampler, "global_indices", counting)
    s = TrainState.fresh(t)
    for _ in range(3):
        loop.train_step(t, s)
    assert drawn == [0, 1, 2]  # sampler.indices' own draw; batch_loss asks for none


def _old_batch_loss(t: Training, losses: torch.Tensor, step: int, local_examples: int) -> torch.Tensor:
    """batch_loss as it was: the global count from a second draw of the batch, always."""
    per_example = losses.numel() // max(local_examples, 1)
    return losses.sum() * (t.env.world_size / (len(t.sampler.global_indices(step)) * per_example))


@pytest.mark.parametrize("sampler", ["random", "curriculum", "two_shares"])
@pytest.mark.parametrize("tokens", [1, 7])
def test_batch_loss_is_bit_identical_to_counting_the_global_batch(sampler, tokens):
    t = _training()
    n = t.data.n_train
    if sampler == "curriculum":  # a randperm per draw: the second draw is the costly one
        t = dataclasses.replace(t, sampler=PacedSampler(n, 32, 0, 60, 0.3, 0.5))
    elif sampler == "two_shares":  # this process's half of the batch: the count must come from the sampler
        t = dataclasses.replace(t, sampler=BatchSampler(n, 33, 0, rank=1, world_size=2))
    gen = torch.Generator().manual_seed(0)
    for step in (0, 5, 59):
        idx = t.sampler.indices(step)
        losses = torch.rand(len(idx), tokens, generator=gen).squeeze(-1)  # per-example or per-token losses
        got = loop.batch_loss(t, losses, step, len(idx))
        assert torch.equal(got, _old_batch_loss(t, losses, step, len(idx))), (sampler, step)
    if sampler == "two_shares":
        assert len(idx) == 16  # 33 split 17 / 16: the scale is 1 / 33 per example, not 1 / 16
