"""Gradient coding (Tandon et al. 2017, fractional repetition) against exact references.

- in process: the encoding matrix B and the decode vectors a satisfy aᵀB = 1ᵀ with a = 0 on the stragglers, exactly
  (integers), for every straggler set of several (n, s); the straggler draw is a pure, seeded, uniform function;
- four gloo processes: with every straggler set of n = 4, s = 1 (and none), the decoded gradient equals the
  full-batch gradient computed in one process; through the trainer, gradient_coding equals DDP (float64) for
  s = 0, 1, 3, with gradient clipping seeing the decoded gradient; bytes are P per process per step; a resume is
  exact; wrong settings are one-line errors.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed_testing import Stepper, spawn
from trainlab.config import ConfigError
from trainlab.distributed.comm import CommMeter
from trainlab.distributed.env import DistEnv
from trainlab.distributed.gradient_coding import FractionalRepetitionCode, GradientCoding, straggler_set
from trainlab.rundir import checkpoints as ckpt
from trainlab.train.config import from_cli

BASE = ["workload.p=13", "model.width=16", "batch_size=40", "dtype=float64", "steps=50", "trace=false"]
STEPS = 4


# -- the code, in process ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,s", [(1, 0), (4, 0), (2, 1), (4, 1), (6, 1), (6, 2), (4, 3), (8, 3)])
def test_every_straggler_set_decodes_the_full_gradient_exactly(n, s):
    code = FractionalRepetitionCode(n, s)
    B = code.encoding_matrix()
    assert B.dtype == torch.int64 and torch.equal(B, B.T)
    assert torch.equal(B.sum(1), torch.full((n,), s + 1)) and torch.equal(B.sum(0), torch.full((n,), s + 1))
    g = torch.randint(-1000, 1000, (n, 7), generator=torch.Generator().manual_seed(n * 10 + s))  # part gradients
    messages = B @ g  # worker i sends Σ_j B[i, j] g_j
    checked = 0
    for k in range(s + 1):
        for lost in itertools.combinations(range(n), k):
            a = code.decode_vector(lost)
            assert all(a[i] == 0 for i in lost), (lost, a)
            assert torch.equal(a @ B, torch.ones(n, dtype=torch.int64)), (lost, a)
            assert torch.equal(a @ messages, g.sum(0))  # the full gradient from the survivors' messages alone
            checked += 1
    assert checked == sum(len(list(itertools.combinations(range(n), k))) for k in range(s + 1))
    # one straggler too many, or a whole group lost: no decode
    if s + 1 <= n:
        with pytest.raises(ValueError, match="at most s"):
            code.decode_vector(tuple(range(s + 1)))


def test_four_workers_one_straggler_layout():
    code = FractionalRepetitionCode(4, 1)
    assert code.groups == [[0, 1], [2, 3]] and code.parts_of(3) == [2, 3]
    assert [code.decode_vector(S).tolist() for S in [(0,), (1,), (2,), (3,), ()]] == [
        [0, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 1], [1, 0, 1, 0], [1, 0, 1, 0]]
    for n, s in [(3, 1), (4, 2), (6, 3), (0, 0)]:
        with pytest.raises(ValueError):
            FractionalRepetitionCode(n, s)


def test_straggler_draw_is_seeded_pure_and_uniform():
    assert straggler_set(4, 0, 0, 5) == ()
    draws = [straggler_set(4, 1, 7, t) for t in range(4000)]
    assert draws == [straggler_set(4, 1, 7, t) for t in range(4000)]  # a pure function of (seed, step)
    assert draws != [straggler_set(4, 1, 8, t) for t in range(4000)]
    counts = Counter(draws)
    assert set(counts) == {(0,), (1,), (2,), (3,)} and min(counts.values()) > 900  # ~1000 each
    pairs = Counter(straggler_set(6, 2, 0, t) for t in range(3000))
    assert len(pairs) == 15 and all(len(p) == 2 and p[0] < p[1] for p in pairs)


def test_wrong_settings_are_one_line_errors():
    cases = {
        ("dist.stragglers=2",): "dist.stragglers: applies to gradient_coding only",
        ("dist=diloco", "dist.straggler_seed=3"): "dist.straggler_seed: applies to gradient_coding only",
        ("dist=gradient_coding", "dist.compression=dgc"): "dist.compression",
        ("dist=gradient_coding", "dist.inner_steps=5"): "dist.inner_steps",
        ("dist=gradient_coding", "dist.graph=complete"): "dist.graph: applies to gossip only",
        ("dist=gradient_coding", "dist.stragglers=-1"): "dist.stragglers",
    }
    for args, start in cases.items():
        with pytest.raises(ConfigError) as err:
            from_cli(None, list(args))
        message = str(err.value)
        assert message.startswith(start) and "\n" not in message, (args, message)
    # (s + 1) must divide the processes: one process and the default s = 1 is refused, naming both numbers
    with pytest.raises(ConfigError) as err:
        Stepper([*BASE, "dist=gradient_coding"], DistEnv())
    message = str(err.value)
    assert message.startswith("dist.stragglers: s + 1 = 2 must divide the number of processes 1") and "\n" not in message
    assert not dist.is_initialized()  # the one-process group made for the run is gone again


def test_one_process_without_stragglers_is_the_plain_trainer():
    reference = Stepper(BASE, DistEnv()).train(STEPS).model.state_dict()
    parts = Stepper([*BASE, "dist=gradient_coding", "dist.stragglers=0"], DistEnv())
    try:
        parts.train(STEPS)
        P = sum(q.numel() * 8 for q in parts.model.parameters())
        for k, v in reference.items():
            torch.testing.assert_close(parts.model.state_dict()[k], v, rtol=1e-12, atol=1e-12)
        assert parts.strategy.meter.by_kind == {"gradient_coding": STEPS * P}
    finally:
        parts.strategy.finish()
    assert not dist.is_initialized()


# -- four processes ------------------------------------------------------------------------------------------

DIN, DOUT, SHARE = 5, 3, 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIN, 7), nn.Tanh(), nn.Linear(7, DOUT)).double()


def _global_batch(world: int):
    g = torch.Generator().manual_seed(11)
    return (torch.randn(world * SHARE, DIN, generator=g, dtype=torch.float64),
            torch.randn(world * SHARE, DOUT, generator=g, dtype=torch.float64))


def _grads(model):
    return [q.grad.clone() for q in model.parameters()]


def _decode_checks(rank: int, world: int):
    """For every straggler set of n = 4, s = 1 (and none): the decoded gradient vs the full-batch gradient."""
    x, y = _global_batch(world)
    ref_model = _model()
    nn.functional.mse_loss(ref_model(x), y, reduction="sum").div(len(x)).backward()  # one process, whole batch
    reference = _grads(ref_model)
    model = _model()
    gc = GradientCoding(model, stragglers=1, seed=0, meter=CommMeter())
    mine = slice(rank * SHARE, (rank + 1) * SHARE)
    out = {}
    for lost in [(), (0,), (1,), (2,), (3,)]:
        gc.stragglers_at = lambda step, lost=lost: lost  # type: ignore[method-assign]
        model.zero_grad()
        # the trainer's loss: sum · world / global count (DDP's convention)
        (nn.functional.mse_loss(model(x[mine]), y[mine], reduction="sum") * world / len(x)).backward()
        gc.reduce()
        out[lost] = max((a - b).abs().max().item() for a, b in zip(_grads(model), reference))
    out["bytes"] = dict(gc.meter.by_kind)
    out["P"] = sum(q.numel() * 8 for q in model.parameters())
    out["straggled"] = gc.straggled
    return out


def _trainer_checks(rank: int, world: int, root: str):
    env, out = DistEnv(rank=rank, world_size=world), {}

    def run(args, steps=STEPS):
        parts = Stepper([*BASE, *args], env).train(steps)
        return {k: v.clone() for k, v in parts.model.state_dict().items()}, parts

    out["ddp"], parts = run(["dist=ddp"])
    out["P"] = sum(q.numel() * q.element_size() for q in parts.model.parameters() if q.requires_grad)
    for s in (0, 1, 3):
        state, parts = run(["dist=gradient_coding", f"dist.stragglers={s}"])
        out[f"s{s}"] = state
        out[f"s{s}_meter"] = dict(parts.strategy.meter.by_kind)
        out[f"s{s}_straggled"] = list(parts.strategy.impl.straggled)
    # clipping (and the traced norm) see the decoded full-batch gradient, as under DDP
    out["ddp_clip"], _ = run(["dist=ddp", "grad_clip=0.001"])
    out["s1_clip"], _ = run(["dist=gradient_coding", "grad_clip=0.001"])
    # resume: checkpoint at step 3 (rank 0 writes), continue to 6; a fresh run restores it and continues
    args = [*BASE, "dist=gradient_coding", "dist.straggler_seed=5"]
    parts = Stepper(args, env).train(3)
    payload = parts.checkpoint_payload()
    if rank == 0:
        ckpt.save(Path(root), parts.step, payload)
    dist.barrier()
    parts.train(3)
    again = Stepper(args, env)
    again.restore(ckpt.load(Path(root)))
    assert again.step == 3
    again.train(3)
    out["resume"] = [dict(parts.model.state_dict()), dict(again.model.state_dict())]
    out["resume_state"] = [parts.strategy.state_dict(), again.strategy.state_dict()]
    return out


def _all_checks(rank: int, world: int, root: str):
    return {"decode": _decode_checks(rank, world), "trainer": _trainer_checks(rank, world, root)}


@pytest.mark.slow
def test_four_processes_decode_every_straggler_set_and_equal_ddp(tmp_path):
    results = spawn(_all_checks, 4, (str(tmp_path),))
    for r in results:
        d = r["decode"]
        for lost in [(), (0,), (1,), (2,), (3,)]:
            assert d[lost] <= 1e-14, (lost, d[lost])
        assert d["bytes"] == {"gradient_coding": 5 * d["P"]}  # every worker's coded gradient, every step
        assert d["straggled"] == [1, 1, 1, 1]
    P = results[0]["trainer"]["P"]
    for r in results:
        t = r["trainer"]
        for key in ("s0", "s1", "s3"):
            for k, v in t["ddp"].items():
                torch.testing.assert_close(t[key][k], v, rtol=1e-10, atol=1e-10, msg=f"{key} {k}")
            assert t[f"{key}_meter"] == {"gradient_coding": STEPS * P}
        for k, v in t["ddp_clip"].items():
            torch.testing.assert_close(t["s1_clip"][k], v, rtol=1e-10, atol=1e-10, msg=k)
        assert not all(torch.equal(t["ddp_clip"][k], t["ddp"][k]) for k in t["ddp"])  # the clip was active
        assert sum(t["s1_straggled"]) == STEPS and sum(t["s3_straggled"]) == 3 * STEPS and sum(t["s0_straggled"]) == 0
        first, resumed = t["resume"]
        for k in first:
            assert torch.equal(first[k], resumed[k]), k
        assert t["resume_state"][0] == t["resume_state"][1]
    # every process drew the same stragglers
    assert all(r["trainer"]["s1_straggled"] == results[0]["trainer"]["s1_straggled"] for r in results)
