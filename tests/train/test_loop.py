"""The trainer on tiny runs: learning, metrics rows, timing that excludes evaluation, resume, Saxe's curves."""

import json
import math
import time

import numpy as np
import pytest
import torch

import trainlab
from trainlab.distributed.env import DistEnv
from trainlab.train import loop
from trainlab.train.config import parse_overrides, resolve
from trainlab.train.progress import Progress
from trainlab.rundir import RunDir
from trainlab.train.runlog import RunLog
from trainlab.train.state import TrainState
from trainlab.train.training import build_training
from trainlab.workloads.regression import saxe_loss_curve

TINY = ["workload.p=23", "steps=60", "eval_every=20", "model.width=64", "optimizer.lr=1e-2"]


def rows(run_dir, name="metrics.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_tiny_run_learns_and_writes_the_run_directory(tmp_path):
    run_dir = trainlab.run(None, TINY, out=tmp_path / "run", quiet=True)
    metrics = rows(run_dir)
    assert [r["step"] for r in metrics] == [0, 20, 40, 60]
    for key in ("step", "time", "cpu_time", "wall", "lr", "train_loss", "train_acc", "val_loss", "val_acc"):
        assert key in metrics[0]
    assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60
    assert summary["events"]["memorized"] is not None  # 23² · 0.4 examples are easy to memorise
    assert {"memorized", "generalized", "grokking_delay_steps"} <= set(summary["events"])
    assert summary["final"]["step"] == 60 and summary["versions"]["torch"] == torch.__version__
    for name in ("config.yaml", "events.json", "report.html", "plots/loss.png", "checkpoints/latest.json"):
        assert (run_dir / name).exists(), name
    trace = rows(run_dir, "trace.jsonl")
    assert [r["step"] for r in trace] == list(range(60))
    assert all(r["grad_norm"] > 0 and r["lr"] == 1e-2 for r in trace)


def test_evaluation_time_is_excluded(tmp_path, monkeypatch):
    real = loop.evaluate

    def slow_evaluate(t, s, wall):
        time.sleep(0.3)
        return real(t, s, wall)

    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    run_dir = trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    # The last row's wall clock is read before its own evaluation: three sleeps precede it.
    assert summary["wall_time"] >= 3 * 0.3
    assert summary["train_time"] < summary["wall_time"] - 3 * 0.3 + 0.05


def test_resume_continues_bit_identically(tmp_path):
    full = trainlab.run(None, TINY, out=tmp_path / "full", quiet=True, report=False)
    half = trainlab.run(None, [*TINY[:1], "steps=30", *TINY[2:]], out=tmp_path / "half", quiet=True, report=False)
    # A completed 30-step run resumed to 60 steps must pass through exactly the same states.
    trainlab.run(overrides=["steps=60"], resume=half, quiet=True, report=False)
    a, b = rows(full), {r["step"]: r for r in rows(half)}
    assert sorted(b) == [0, 20, 30, 40, 60]  # the 30-step run also evaluated at its last step
    for ra in a:
        rb = b[ra["step"]]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert ra[key] == rb[key], (ra["step"], key)
    assert rows(full, "trace.jsonl") == rows(half, "trace.jsonl")


def test_existing_run_directory_is_never_overwritten(tmp_path):
    trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)
    with pytest.raises(trainlab.train.RunError, match="already holds a run"):
        trainlab.run(None, TINY, out=tmp_path / "run", quiet=True, report=False)


def test_minibatch_grad_clip_and_schedule(tmp_path):
    run_dir = trainlab.run(None, ["workload=sparse_parity", "workload.n=10", "workload.n_train=256", "steps=40",
                                  "eval_every=20", "batch_size=32", "grad_clip=0.5", "schedule=cosine",
                                  "schedule.warmup=5"], out=tmp_path / "run", quiet=True, report=False)
    metrics = rows(run_dir)
    assert metrics[0]["lr"] == pytest.approx(1e-3 / 5) and "grad_norm" in metrics[-1]  # AdamW's default lr
    assert metrics[-1]["lr"] < metrics[1]["lr"]


def test_divergence_stops_the_run(tmp_path):
    run_dir = trainlab.run(None, ["workload=teacher_student", "optimizer=sgd", "optimizer.lr=1e6", "steps=200",
                                  "eval_every=10"], out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] < 200


def test_deep_linear_learning_curve_matches_saxe(tmp_path):
    """Trainer + deep_linear workload + plain GD from Saxe et al.'s decoupled initial condition."""
    a0, lr, steps = 0.01, 0.01, 700
    cfg = resolve([parse_overrides(["workload=deep_linear", "optimizer=sgd", f"optimizer.lr={lr}",
                                    f"steps={steps}", "eval_every=25"])])
    t = build_training(cfg, DistEnv())
    u, s, v = (m.float() for m in t.workload.teacher())
    r = torch.eye(16)[:, : len(s)]
    with torch.no_grad():
        t.model.body.fc0.weight.copy_(math.sqrt(a0) * r @ v.T)
        t.model.head.weight.copy_(math.sqrt(a0) * u @ r.T)
    rd = RunDir(tmp_path)
    status = loop.train_loop(t, TrainState.fresh(t), rd, RunLog(rd, Progress(steps, quiet=True), main=True),
                             loop.StopFlag())
    assert status == "completed"
    logged = rows(tmp_path)
    expected = saxe_loss_curve(s.tolist(), a0, lr, steps)
    got = np.array([row["train_loss"] for row in logged])
    want = expected[[row["step"] for row in logged]]
    assert np.max(np.abs(got - want)) < 0.02 * expected[0]
    assert got[-1] < 1e-3


def test_tensorboard_on_request(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(trainlab.train.RunError, match=r"pip install 'trainlab\[tensorboard\]'"):
            trainlab.run(None, [*TINY, "tensorboard=true"], out=tmp_path / "run", quiet=True)
        assert not (tmp_path / "run").exists()  # refused before anything was written
    else:
        run_dir = trainlab.run(None, [*TINY, "tensorboard=true"], out=tmp_path / "run", quiet=True, report=False)
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_bf16_autocast_path_runs_on_cpu(tmp_path):
    run_dir = trainlab.run(None, [*TINY, "autocast=bf16"], out=tmp_path / "run", quiet=True, report=False)
    metrics = rows(run_dir)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path):
    eager = rows(trainlab.run(None, TINY, out=tmp_path / "eager", quiet=True, report=False))
    compiled = rows(trainlab.run(None, [*TINY, "compile=true"], out=tmp_path / "compiled", quiet=True, report=False))
    for a, b in zip(eager, compiled):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3, abs=1e-5)


def test_stop_at_target_ends_at_the_first_evaluation_that_reaches_it(tmp_path):
    args = ["workload=mnist1d", "model=mlp", "steps=400", "eval_every=10", "optimizer.weight_decay=0",
            "threshold=0.2", "stop_at_target=true"]
    run_dir = trainlab.run(None, args, out=tmp_path / "run", quiet=True, report=False)
    metrics, summary = rows(run_dir), json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "reached_target" and summary["steps"] < 400
    assert metrics[-1]["val_acc"] >= 0.2 and all(r["val_acc"] < 0.2 for r in metrics[:-1])
    assert summary["events"]["generalized"] == metrics[-1]["step"] == summary["steps"]


def test_time_budget_stops_at_the_first_evaluation_past_it(tmp_path, monkeypatch):
    real = loop.train_step

    def slow_step(t, s):  # 20 ms of "training" per step: the budget of 0.1 s is spent within ~5 steps
        time.sleep(0.02)
        return real(t, s)

    monkeypatch.setattr(loop, "train_step", slow_step)
    run_dir = trainlab.run(None, TINY + ["eval_every=2", "time_budget=0.1"], out=tmp_path / "run", quiet=True,
                           report=False)
    metrics, summary = rows(run_dir), json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "out_of_time" and summary["steps"] < 60
    assert metrics[-1]["time"] >= 0.1 and all(r["time"] < 0.1 for r in metrics[:-1])
    assert (run_dir / "checkpoints" / "latest.json").exists()


def test_stop_at_a_loss_target(tmp_path):
    args = ["workload=mnist1d", "model=mlp", "steps=400", "eval_every=10", "stop_at_target=true",
            "target_metric=val_loss", "target=1.6"]
    run_dir = trainlab.run(None, args, out=tmp_path / "run", quiet=True, report=False)
    metrics, summary = rows(run_dir), json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "reached_target" and summary["steps"] < 400
    assert metrics[-1]["val_loss"] <= 1.6 and all(r["val_loss"] > 1.6 for r in metrics[:-1])
