"""Nothing that is not finite is kept: a run stops at its first step whose loss is NaN or inf, or at a checkpoint
that would hold such a tensor, as ``diverged``; every checkpoint it keeps is finite, and the summary, the events
and the last metrics row say where it went wrong."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import trainlab
from trainlab.distributed.env import DistEnv
from trainlab.rundir import RunDir, checkpoints
from trainlab.train import loop
from trainlab.train.state import nonfinite_tensor

# a small regression run; its evaluations are far apart, so every stop below falls between two of them
SMALL = ["workload=teacher_student", "workload.n_train=128", "workload.n_val=64", "model.width=32", "batch_size=32",
         "steps=60", "eval_every=50"]
# plain SGD at lr 1e6 overflows within a few steps; a checkpoint at every step would keep the bad ones if any
HUGE_LR = [*SMALL, "optimizer=sgd", "optimizer.lr=1e6", "checkpoint_every=1"]


def _run(out: Path, overrides: list[str], **kwargs) -> Path:
    return trainlab.run(None, overrides, out=out, quiet=True, report=False, **kwargs)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _kept_checkpoints(run_dir: Path) -> dict[int, dict]:
    """Every checkpoint file the run kept, loaded (weights_only) by its step."""
    files = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    return {int(f.stem.split("_")[1]): torch.load(f, weights_only=True) for f in files}


def _assert_kept_checkpoints_are_finite(run_dir: Path, last_finite: int) -> None:
    kept = _kept_checkpoints(run_dir)
    assert kept and max(kept) == last_finite == checkpoints.latest_manifest(run_dir / "checkpoints")["step"]
    assert len(kept) <= checkpoints.KEEP and all(nonfinite_tensor(p) is None for p in kept.values())
    run = trainlab.load_run(run_dir)
    assert run.step == last_finite and all(torch.isfinite(v).all() for v in run.model.state_dict().values())


def test_a_huge_lr_stops_at_the_first_nonfinite_loss_and_keeps_only_finite_checkpoints(tmp_path):
    run_dir = _run(tmp_path / "run", HUGE_LR)
    trace = RunDir(run_dir).trace()
    bad = next(r["step"] for r in trace if not _finite(r["loss"]))
    assert trace[-1]["step"] == bad  # no step was taken after the first non-finite loss
    summary = _summary(run_dir)
    assert summary["status"] == "diverged" and summary["steps"] == bad + 1
    divergence = summary["divergence"]
    assert divergence["step"] == bad and divergence["nonfinite"] == "loss"
    assert f"step {bad}" in divergence["detail"]
    assert [(e["name"], e["step"]) for e in summary["event_list"]] == [("diverged", bad)]
    last = RunDir(run_dir).metrics()[-1]  # the stop's row evaluates the stopped state and says what happened
    assert last["step"] == bad + 1 and last["diverged"] == divergence["detail"] and not _finite(last["train_loss"])
    # a checkpoint was due at every step: the newest kept one is the last finite state, before the bad step
    _assert_kept_checkpoints_are_finite(run_dir, divergence["last_finite_checkpoint"])
    assert divergence["last_finite_checkpoint"] <= bad


def test_resuming_a_diverged_run_diverges_again_at_the_same_step(tmp_path):
    """Nothing configured changes on resume (the lr cannot), so the last finite checkpoint leads to the same
    divergence, bit for bit: the honest answer, and why the README says to start a new run with another lr."""
    run_dir = _run(tmp_path / "run", HUGE_LR)
    before = _summary(run_dir)
    trace = (run_dir / "trace.jsonl").read_text()
    _run(tmp_path / "unused", [], resume=run_dir)
    after = _summary(run_dir)
    assert after["status"] == "diverged" and after["divergence"] == before["divergence"]
    assert (run_dir / "trace.jsonl").read_text() == trace


def _poison(monkeypatch, at_step: int, pick, value: float = math.nan) -> dict:
    """Fill a tensor that ``pick(training)`` returns as ``(name, tensor)`` with ``value`` once ``at_step`` optimizer
    steps have been taken, so that the state of step ``at_step`` is the first one that is not finite."""
    real, hit = loop.train_step, {}

    def train_step(t, s):
        loss = real(t, s)
        if s.step == at_step:
            hit["name"], tensor = pick(t)
            with torch.no_grad():
                tensor.fill_(value)
        return loss

    monkeypatch.setattr(loop, "train_step", train_step)
    return hit


def _first_parameter(t):
    name, p = next(iter(t.model.named_parameters()))
    return f"model.{name}", p


def _first_second_moment(t):
    p = t.optimizer.param_groups[0]["params"][0]
    return "optimizer.state.0.exp_avg_sq", t.optimizer.state[p]["exp_avg_sq"]


@pytest.mark.parametrize(("at_step", "pick", "eval_every", "stop", "nonfinite"), [
    # between checkpoints: the next step's loss is NaN, and the run stops right after that step
    (7, _first_parameter, 50, 8, "loss"),
    # a checkpoint is due at 10 (no evaluation): it would hold the NaN, so it is not written
    (10, _first_parameter, 50, 10, "model."),
    # Adam's weights stay finite (an inf second moment makes the update 0), so the evaluation at 10 looks healthy:
    # only the checkpoint check sees it, and the row of 10 (built before the checkpoint) says so
    (10, _first_second_moment, 5, 10, "optimizer.state.0.exp_avg_sq"),
], ids=["parameter-then-loss", "parameter-at-checkpoint", "optimizer-state-at-evaluation"])
def test_an_injected_nan_stops_the_run_where_it_appears(tmp_path, monkeypatch, at_step, pick, eval_every, stop,
                                                        nonfinite):
    hit = _poison(monkeypatch, at_step, pick, math.inf if "optimizer" in nonfinite else math.nan)
    run_dir = _run(tmp_path / "run", [*SMALL, "checkpoint_every=5", f"eval_every={eval_every}"])
    summary = _summary(run_dir)
    divergence = summary["divergence"]
    assert summary["status"] == "diverged" and summary["steps"] == stop
    assert divergence["step"] == at_step and divergence["last_finite_checkpoint"] == 5
    assert divergence["nonfinite"] == ("loss" if nonfinite == "loss" else hit["name"])
    assert divergence["nonfinite"].startswith(nonfinite)
    rows = RunDir(run_dir).metrics()  # one row per step; the stop's says what happened
    assert rows[-1]["step"] == stop and rows[-1]["diverged"] == divergence["detail"]
    assert all("diverged" not in r for r in rows[:-1])
    _assert_kept_checkpoints_are_finite(run_dir, 5)


def test_a_late_look_still_names_the_first_nonfinite_step(tmp_path, monkeypatch):
    """On an accelerator the losses are read every FINITE_CHECK_EVERY steps (no per-step sync): the run stops
    at the next look, and the summary still names the step whose loss first was not finite."""
    monkeypatch.setattr(loop, "look_every", lambda env: loop.FINITE_CHECK_EVERY)
    _poison(monkeypatch, 7, _first_parameter)
    run_dir = _run(tmp_path / "run", [*SMALL, "checkpoint_every=0"])
    summary = _summary(run_dir)
    assert summary["steps"] == loop.FINITE_CHECK_EVERY and summary["divergence"]["step"] == 7
    assert summary["divergence"]["last_finite_checkpoint"] is None  # none was ever written


@pytest.mark.slow
def test_the_processes_of_a_torchrun_launch_stop_together_with_finite_checkpoints(tmp_path):
    """Two processes agree on a divergence (an all-reduce of their losses, the main process's verdict on each
    checkpoint): both stop at the same step, and what they kept is finite."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainlab",
           "run", *HUGE_LR, "checkpoint_every=2", "--out", str(out), "--quiet", "--no-report"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = _summary(out)
    [event] = [e for e in summary["event_list"] if e["name"] == "diverged"]
    assert summary["status"] == "diverged" and summary["world_size"] == 2
    assert 0 <= summary["steps"] - event["step"] <= loop.FINITE_CHECK_EVERY
    assert RunDir(out).metrics()[-1]["diverged"] == event["detail"]
    _assert_kept_checkpoints_are_finite(out, checkpoints.latest_manifest(out / "checkpoints")["step"])


def _watch(observes_loss: bool = False) -> loop.LossWatch:
    return loop.LossWatch(SimpleNamespace(env=DistEnv(), hooks=SimpleNamespace(observes_loss=observes_loss)))


def test_the_watch_reads_every_pending_loss_at_once_and_forgets_them():
    watch = _watch()
    for step, loss in enumerate([1.0, 0.5, math.inf, math.nan]):
        watch.add(step + 10, torch.tensor(loss))
    assert watch.first_nonfinite() == (12, math.inf)
    assert watch.first_nonfinite() is None  # read once
    watch.add(14, torch.tensor(0.1))
    assert watch.first_nonfinite() is None


def test_optimizers_that_roll_back_diverging_trials_are_not_watched():
    watch = _watch(observes_loss=True)  # AutoLRS: its checkpoints are still checked
    watch.add(0, torch.tensor(math.nan))
    assert watch.first_nonfinite() is None


def test_a_run_that_does_not_diverge_has_no_divergence(tmp_path):
    summary = _summary(_run(tmp_path / "run", [*SMALL, "steps=10", "checkpoint_every=4"]))
    assert summary["status"] == "completed" and summary["divergence"] is None
