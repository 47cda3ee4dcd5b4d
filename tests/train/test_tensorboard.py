"""TensorBoard output: every metrics column and the trace, and after a kill and a resume no point twice."""

import json

import pytest

import trainlab
from trainlab.train import runlog

pytest.importorskip("tensorboard")  # installed by the test extra; trainlab[tensorboard] for users

RUN = ["workload=sparse_parity", "workload.n=10", "workload.n_train=128", "model.width=8", "steps=30",
       "eval_every=5", "checkpoint_every=10", "batch_size=32", "tensorboard=true"]


def scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Killed(Exception):
    pass


def test_metrics_and_trace_once_each_after_a_kill_and_resume(tmp_path, monkeypatch):
    whole = scalars(trainlab.run(overrides=RUN, out=tmp_path / "whole", quiet=True, report=False))
    assert [s for s, _ in whole["val_loss"]] == list(range(0, 31, 5))
    assert [s for s, _ in whole["trace/loss"]] == list(range(30)) and "trace/lr" in whole

    real_step = runlog.RunLog.step

    def step(self, s, loss):  # killed at step 17: rows 15 and the trace up to 16 written after checkpoint 10
        real_step(self, s, loss)
        if s == 17:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(runlog.RunLog, "step", step)
        with pytest.raises(Killed):
            trainlab.run(overrides=RUN, out=tmp_path / "killed", quiet=True, report=False)
    trainlab.run(resume=tmp_path / "killed", quiet=True, report=False)
    resumed = scalars(tmp_path / "killed")
    for tag in ("val_loss", "train_acc", "lr", "trace/loss", "trace/grad_norm"):
        assert resumed[tag] == pytest.approx(whole[tag]), tag  # same steps, once each, same values
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s, _ in resumed["val_loss"]]
