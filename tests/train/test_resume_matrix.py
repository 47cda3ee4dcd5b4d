"""Resume is exact: for every registry schedule and every optimizer family, a run killed at a step (during the
warm-up, mid-run, in the cooldown) and resumed from its last checkpoint writes exactly the metrics and trace rows
of the run that was never interrupted (every column but the clocks), and ends with the same weights.

A kill is simulated in-process: an exception raised from the progress callback at step ``k`` leaves the run
directory as SIGKILL would (rows written after the last checkpoint, no checkpoint at ``k``); ``--resume`` must
cut those rows and write them again identically. A stop request (SIGTERM / Ctrl-C) checkpoints at ``k`` instead.
The subprocess form of the same promise (a real SIGKILL) is tested in tests/train/test_multiprocess.py.

These runs are small (an MLP of width 16 on sparse parity, 40 steps) so the whole matrix runs in CI.
"""

from __future__ import annotations

import sys

import pytest
import torch

from trainlab.schedules import names as schedule_names
from resume_testing import assert_resume_exact, run_quietly

STEPS, WARMUP, CKPT = 40, 10, 6
BASE = ["workload=sparse_parity", "workload.n=10", "workload.k=2", "workload.n_train=256", "workload.n_val=128",
        "model=mlp", "model.width=16", "model.depth=1", f"steps={STEPS}", "eval_every=5", "batch_size=32",
        f"checkpoint_every={CKPT}", "grad_clip=5"]
# A kill during the warm-up, one mid-run and one in the cooldown (the last 20% of a wsd run; cosine's tail).
KILL_STEPS = (WARMUP - 3, STEPS // 2 + 1, STEPS - 3)

SCHEDULE_OPTIONS = {  # options that make each schedule change the lr across the kill points
    "step": ["schedule.step_size=8"],
    "multistep": ["schedule.milestones=0.3,0.6,0.9"],
    "two_regime": ["schedule.decay=cosine"],
}

# One or more optimizers of each family: trainlab's own, torch.optim, pytorch-optimizer, schedule-free,
# wrappers around another optimizer (and around another wrapper), and AutoLRS (sets its own lr, steered by the
# training loss).
OPTIMIZERS = {
    "lion": ["optimizer=lion", "optimizer.lr=1e-3"],
    "lamb": ["optimizer=lamb"],
    "diffgrad": ["optimizer=diffgrad"],
    "muon": ["optimizer=muon"],
    "dualized": ["optimizer=dualized"],
    "agd": ["optimizer=agd", "model.bias=false"],
    "adamw": ["optimizer=adamw"],
    "sgd_nesterov": ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
    "nadam": ["optimizer=nadam", "optimizer.decoupled_weight_decay=true"],
    "adan": ["optimizer=adan"],
    "prodigy": ["optimizer=prodigy"],
    "adamw_schedulefree": ["optimizer=adamw_schedulefree", "optimizer.warmup_steps=5"],
    "schedulefreeadamw": ["optimizer=schedulefreeadamw"],
    "perpgrad": ["optimizer=perpgrad", "optimizer.base=adamw", "optimizer.lr=1e-2"],
    "coordclip": ["optimizer=coordclip", "optimizer.base=lion", "optimizer.lr=1e-3"],
    "grokfast_perpgrad": ["optimizer=grokfast", "optimizer.base=perpgrad", "optimizer.lr=1e-2"],  # a wrapper of a wrapper
    "autolrs": ["optimizer=autolrs", "optimizer.candidates=2", "optimizer.explore_steps=3",
                "optimizer.stage_steps=6", "optimizer.max_stage_steps=12"],
}

# Robust training (with its radius warm-up across the kill points): PGD's random starts draw from the global RNG
# that the checkpoint holds; IBP with batch norm keeps running statistics in the model's state. (No probes here:
# their probe_seconds/* columns are clocks, which the harness would compare.)
ROBUST = {
    "adversarial_pgd": ["loss.adversarial=pgd", "loss.adversarial_eps=0.1", "loss.adversarial_steps=3",
                        f"loss.adversarial_warmup={WARMUP}"],
    "certified_ibp_batchnorm": ["loss.certified=ibp", "loss.certified_eps=0.1", f"loss.certified_warmup={WARMUP}",
                                "model.batchnorm=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [s for s in schedule_names() if s != "refined"])
def test_every_schedule_resumes_exactly(schedule, tmp_path, monkeypatch):
    overrides = [*BASE, "optimizer=adamw", f"schedule={schedule}", f"schedule.warmup={WARMUP}",
                 *SCHEDULE_OPTIONS.get(schedule, [])]
    assert_resume_exact(tmp_path, overrides, monkeypatch, KILL_STEPS)


@pytest.mark.slow
def test_refined_schedule_resumes_exactly(tmp_path, monkeypatch):
    source = run_quietly(tmp_path / "source", [*BASE, "optimizer=adamw"])
    overrides = [*BASE, "optimizer=adamw", "schedule=refined", f"schedule.from_run={source}"]
    assert_resume_exact(tmp_path / "refined", overrides, monkeypatch, KILL_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_family_resumes_exactly(name, tmp_path, monkeypatch):
    overrides = [*BASE, *OPTIMIZERS[name], "schedule=wsd", f"schedule.warmup={WARMUP}"]
    assert_resume_exact(tmp_path, overrides, monkeypatch, KILL_STEPS)


def test_a_stop_request_checkpoints_where_it_stops_and_resumes_exactly(tmp_path, monkeypatch):
    overrides = [*BASE, "optimizer=lion", "schedule=cosine", f"schedule.warmup={WARMUP}"]
    assert_resume_exact(tmp_path, overrides, monkeypatch, kills=(WARMUP + 1,), how="stop")


def test_the_lr_after_resume_is_the_schedule_s_not_the_optimizer_state_s(tmp_path, monkeypatch):
    """The regression the matrix exists for: lion + cosine warm-up, killed after a checkpoint in the warm-up."""
    overrides = [*BASE, "optimizer=lion", "schedule=cosine", f"schedule.warmup={WARMUP}"]
    assert_resume_exact(tmp_path, overrides, monkeypatch, kills=(CKPT + 1,))


def test_the_harness_sees_a_wrong_lr(tmp_path, monkeypatch):
    """The check can fail: reading base lrs back from the optimizer state (the old bug) is caught."""
    from trainlab.train import state as state_module

    real_restore = state_module.restore

    def restore_reading_lr_back(t, payload):
        s = real_restore(t, payload)
        object.__setattr__(t, "base_lrs", tuple(float(g["lr"]) for g in t.optimizer.param_groups))
        return s

    monkeypatch.setattr(sys.modules["trainlab.train.run"], "restore", restore_reading_lr_back)
    overrides = [*BASE, "optimizer=lion", "schedule=cosine", f"schedule.warmup={WARMUP}"]
    with pytest.raises(AssertionError, match="differs"):
        assert_resume_exact(tmp_path, overrides, monkeypatch, kills=(CKPT + 1,))


@pytest.mark.parametrize("name", list(ROBUST))
def test_robust_training_resumes_exactly(name, tmp_path, monkeypatch):
    overrides = [*BASE, "optimizer=adamw", "schedule=cosine", f"schedule.warmup={WARMUP}", *ROBUST[name]]
    assert_resume_exact(tmp_path, overrides, monkeypatch, KILL_STEPS)


def test_the_harness_sees_attacks_drawn_from_an_unrestored_rng(tmp_path, monkeypatch):
    """The adversarial case can fail: a resume that left the global RNG as the rebuilt run has it (not as the
    checkpoint saved it) draws other PGD starts, and the rows differ -- while the same run without the attack
    does not read that RNG and still resumes exactly."""
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    plain = [*BASE, "optimizer=adamw", "schedule=cosine", f"schedule.warmup={WARMUP}"]
    assert_resume_exact(tmp_path / "plain", plain, monkeypatch, kills=(STEPS // 2 + 1,))
    with pytest.raises(AssertionError, match="differs"):
        assert_resume_exact(tmp_path / "pgd", [*plain, *ROBUST["adversarial_pgd"]], monkeypatch,
                            kills=(STEPS // 2 + 1,))
