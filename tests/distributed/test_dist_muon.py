"""Distributed Muon equals single-process Muon (float64) under ddp (replicated), fsdp (DTensor shards) and zero1.

Reference: :class:`trainlab.optim.muon.Muon` in one process on the same gradients. Shapes include row counts that
do not divide by the process count (FSDP pads its dim-0 shards) and equal shapes (stacked Newton–Schulz).
"""

import math

import pytest
import torch
from torch import nn

from distributed_testing import Stepper, spawn
from trainlab.distributed.comm import CommMeter
from trainlab.distributed.env import DistEnv
from trainlab.distributed.muon import DistributedMuon, owners
from trainlab.optim.muon import Muon

SHAPES = [(7, 5), (4, 4), (4, 4), (3, 6), (9, 2, 2)]  # the last: a conv-like (out, in, k) weight
STEPS = 3
HP = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "adam_lr": 0.01}
TRAINER = ["workload.p=13", "model.width=16", "model.depth=3", "batch_size=40", "dtype=float64", "steps=50",
           "trace=false", "optimizer=muon"]


class Bag(nn.Module):
    """One child module per matrix (FSDP units), plus a vector trained by the AdamW side."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mats = nn.ModuleList()
        for shape in SHAPES:
            holder = nn.Module()
            holder.w = nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64))
            self.mats.append(holder)
        self.bias = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in SHAPES] + \
        [torch.randn(5, generator=g, dtype=torch.float64)]


def _groups(model):
    return [{"params": [h.w for h in model.mats], "use_muon": True}, {"params": [model.bias], "use_muon": False}]


def _reference():
    model = Bag()
    opt = Muon(_groups(model), **HP)
    for step in range(STEPS):
        for q, g in zip([*[h.w for h in model.mats], model.bias], _grads(step)):
            q.grad = g.clone()
        opt.step()
    return [h.w.detach().clone() for h in model.mats] + [model.bias.detach().clone()]


def _run(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    out = {}
    # replicated (ddp): identical gradients on every rank, each orthogonalises its own matrices
    model, meter = Bag(), CommMeter()
    opt = DistributedMuon(_groups(model), meter=meter, **HP)
    for step in range(STEPS):
        for q, g in zip([*[h.w for h in model.mats], model.bias], _grads(step)):
            q.grad = g.clone()
        opt.step()
    out["replicated"] = [h.w.detach().clone() for h in model.mats] + [model.bias.detach().clone()]
    out["replicated_bytes"] = dict(meter.by_kind)
    # sharded (FSDP2 DTensors): each rank holds row shards of parameters, gradients and momentum
    model, meter = Bag(), CommMeter()
    mesh = init_device_mesh("cpu", (world,))
    for holder in model.mats:
        fully_shard(holder, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = DistributedMuon(_groups(model), meter=meter, **HP)
    params = [*[h.w for h in model.mats], model.bias]
    for step in range(STEPS):
        for q, g in zip(params, _grads(step)):
            q.grad = distribute_tensor(g, mesh, q.placements)
        opt.step()
    out["sharded"] = [q.full_tensor().clone() for q in params]
    out["sharded_bytes"] = dict(meter.by_kind)
    # the trainer with optimizer=muon under each strategy, against the one-process trainer
    env = DistEnv(rank=rank, world_size=world)
    for name in ("ddp", "zero1", "fsdp"):
        parts = Stepper([*TRAINER, f"dist={name}"], env).train(STEPS)
        out[f"trainer_{name}"] = parts.strategy.model_state(parts.model)
        out[f"trainer_{name}_type"] = type(parts.optimizer).__name__
    return out


@pytest.mark.slow
def test_distributed_muon_matches_single_process_muon():
    reference = _reference()
    parts = Stepper(TRAINER, DistEnv()).train(STEPS)
    trainer_ref = parts.model.state_dict()
    r0, r1 = spawn(_run, 2)
    for r in (r0, r1):
        for kind in ("replicated", "sharded"):
            for got, want in zip(r[kind], reference):
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name in ("ddp", "zero1", "fsdp"):
        got = r0[f"trainer_{name}"]
        assert set(got) == set(trainer_ref)
        for k in trainer_ref:
            torch.testing.assert_close(got[k], trainer_ref[k], rtol=1e-10, atol=1e-12, msg=f"{name} {k}")
    assert r0["trainer_ddp_type"] == r0["trainer_fsdp_type"] == "DistributedMuon"
    assert r0["trainer_zero1_type"] == "ZeroRedundancyOptimizer"  # its local Muon owns whole matrices
    # bytes: replicated -- each owner broadcasts the matrices it owns; together every matrix once per step
    mats = [torch.empty(s) for s in SHAPES]
    own = owners(mats, 2)
    assert sorted(own) == [0, 0, 0, 1, 1]
    for rank, r in enumerate((r0, r1)):
        mine = sum(math.prod(s) * 8 for s, o in zip(SHAPES, own) if o == rank)
        assert r["replicated_bytes"] == {"muon_broadcast": STEPS * mine}
        # sharded -- every rank sends its padded shard of every matrix to the owner, owners scatter the rows
        shard = sum(math.ceil(s[0] / 2) * math.prod(s[1:]) * 8 for s in SHAPES)
        scatter = sum(2 * math.ceil(s[0] / 2) * math.prod(s[1:]) * 8 for s, o in zip(SHAPES, own) if o == rank)
        assert r["sharded_bytes"] == {"muon_gather": STEPS * shard, "muon_scatter": STEPS * scatter}


def test_owners_deal_largest_first_round_robin():
    mats = [torch.empty(2, 2), torch.empty(8, 8), torch.empty(4, 4), torch.empty(4, 4), torch.empty(1, 3)]
    assert owners(mats, 2) == [1, 0, 1, 0, 0]
    assert owners(mats, 3) == [0, 0, 1, 2, 1]
    assert owners(mats, 1) == [0] * 5
