"""Checkpoints of sharded runs: consolidated on rank 0, loaded with weights_only, resumable on another process count.

zero1 and fsdp: 2 processes train 3 steps, checkpoint (through trainlab's atomic writer), train 3 more; one
process restores that checkpoint and trains 3 steps: the same weights and optimizer state (float64). The other
way round too: a one-process checkpoint resumed by two. DiLoCo's workers hold different weights between outer
steps: its checkpoint keeps every worker's state and resumes exactly on the same number of processes only.
"""

from pathlib import Path

import pytest
import torch

from distributed_testing import Stepper, spawn
from trainlab.distributed.env import DistEnv
from trainlab.rundir import checkpoints as ckpt

BASE = ["workload.p=13", "model.width=16", "batch_size=40", "dtype=float64", "steps=50", "trace=false",
        "optimizer.weight_decay=0.1"]
SHARDED = ("zero1", "fsdp")
DILOCO = ["dist=diloco", "dist.inner_steps=2"]


def _parts(args, env):
    return Stepper([*BASE, *args], env)


def _steps(parts, start, n):
    assert parts.step == start
    parts.train(n)


def _save(parts, directory, rank):
    payload = parts.checkpoint_payload()  # collective for sharded strategies
    if rank == 0:
        ckpt.save(Path(directory), parts.step, payload)


def _resume(parts, directory):
    parts.restore(ckpt.load(Path(directory)))


def _two_processes(rank, world, root):
    env, out = DistEnv(rank=rank, world_size=world), {}
    for name in SHARDED:
        parts = _parts([f"dist={name}"], env)
        _steps(parts, 0, 3)
        _save(parts, f"{root}/{name}-2", rank)
        _steps(parts, 3, 3)
        out[name] = parts.strategy.model_state(parts.model)
        # resume the one-process checkpoint written by the test process, on two
        again = _parts([f"dist={name}"], env)
        _resume(again, f"{root}/{name}-1")
        assert again.step == 3
        _steps(again, 3, 3)
        out[f"{name}-from-1"] = again.strategy.model_state(again.model)
    # DiLoCo: mid-cycle (step 3 of H = 2) the workers differ; the checkpoint keeps both
    parts = _parts(DILOCO, env)
    _steps(parts, 0, 3)
    _save(parts, f"{root}/diloco-2", rank)
    _steps(parts, 3, 2)  # ends at step 5, mid-cycle again: the workers' weights differ
    again = _parts(DILOCO, env)
    _resume(again, f"{root}/diloco-2")
    _steps(again, 3, 2)
    out["diloco"] = [dict(parts.model.state_dict()), dict(again.model.state_dict())]
    out["diloco_meter"] = [parts.strategy.meter.total, again.strategy.meter.total]
    return out


def _close(got, want, tol=1e-10):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.slow
def test_sharded_checkpoints_resume_on_another_process_count(tmp_path):
    single_final = {}
    for name in SHARDED:  # one process (a one-process group): checkpoint at 3, and the 6-step reference
        parts = _parts([f"dist={name}"], DistEnv())
        try:
            _steps(parts, 0, 3)
            _save(parts, tmp_path / f"{name}-1", 0)
            _steps(parts, 3, 3)
            single_final[name] = {k: v.clone() for k, v in parts.strategy.model_state(parts.model).items()}
        finally:
            parts.strategy.finish()
    r0, r1 = spawn(_two_processes, 2, (str(tmp_path),))
    for name in SHARDED:
        _close(r0[name], single_final[name])  # two processes == one (the parity the resume relies on)
        _close(r0[f"{name}-from-1"], single_final[name])  # 1 -> 2 processes
        # 2 -> 1 process: the consolidated checkpoint (weights_only) restored on one process
        payload = ckpt.load(tmp_path / f"{name}-2")
        assert payload["world_size"] == 2 and payload["strategy_name"] == name
        parts = _parts([f"dist={name}"], DistEnv())
        try:
            parts.restore(payload)
            _steps(parts, 3, 3)
            _close(parts.strategy.model_state(parts.model), single_final[name])
        finally:
            parts.strategy.finish()
    # DiLoCo resumes exactly (each worker its own weights), and refuses another process count
    for r in (r0, r1):
        _close(r["diloco"][1], r["diloco"][0], tol=0)
        assert r["diloco_meter"][0] == r["diloco_meter"][1] > 0
    assert not all(torch.equal(r0["diloco"][0][k], r1["diloco"][0][k]) for k in r0["diloco"][0])  # workers differ
    parts = _parts(DILOCO, DistEnv())
    try:
        with pytest.raises(ckpt.CheckpointError, match="torchrun --nproc_per_node=2"):
            parts.restore(ckpt.load(tmp_path / "diloco-2"))
    finally:
        parts.strategy.finish()
