"""Only training time counts; budgets turn late hits into misses."""

import math
import time
from dataclasses import replace

from bench_testing import TINY_PARITY

from trainlab.bench import plan, runner
from trainlab.bench.submission import parse
from trainlab.bench.timing import score_rows
from trainlab.rundir import RunDir
from trainlab.train import loop

ROWS = [{"step": 0, "time": 0.0, "val_acc": 0.1}, {"step": 10, "time": 1.0, "val_acc": 0.5},
        {"step": 15, "probe": 1.0},  # a row without the metric (e.g. a probe's) is not an evaluation
        {"step": 20, "time": 2.0, "val_acc": 0.95}, {"step": 30, "time": 3.0, "val_acc": 0.99}]


def test_score_rows_first_hit_within_budgets():
    assert score_rows(ROWS, "val_acc", 0.9, True) == (2.0, 20)
    assert score_rows(ROWS, "val_acc", 0.9, True, time_budget=2.0, step_budget=20) == (2.0, 20)  # at the budget: in
    assert score_rows(ROWS, "val_acc", 0.9, True, time_budget=1.99) == (math.inf, None)
    assert score_rows(ROWS, "val_acc", 0.9, True, step_budget=19) == (math.inf, None)
    assert score_rows(ROWS, "val_acc", 0.3, False) == (0.0, 0)  # lower is better
    assert score_rows(ROWS, "val_acc", 0.999, True) == (math.inf, None)


def _run(workload, tmp_path, name):
    """One trial of adamw on ``workload`` in this process; its score and wall seconds."""
    trial = plan.bench_trial(workload, parse("adamw optimizer.lr=1e-2"), ruleset="external", study=0, index=0,
                             seed=0, hyperparameters={}, suite="test")
    started = time.perf_counter()
    outcome = runner.execute(trial, str(tmp_path / name), threads=1)
    wall = time.perf_counter() - started
    assert "error" not in outcome, outcome
    return runner.record(trial, tmp_path / name, tmp_path)["score"], wall


def test_slow_evaluation_does_not_change_the_score(tmp_path, monkeypatch):
    fast, _ = _run(TINY_PARITY, tmp_path, "fast")
    assert fast["reached"] and fast["status"] == "reached_target"
    original, calls = loop.evaluate, []

    def slow_evaluate(*args):
        calls.append(args)
        time.sleep(0.4)
        return original(*args)

    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    slow, _ = _run(TINY_PARITY, tmp_path, "slow")
    summary = RunDir(tmp_path / "slow").summary()
    # they slept: the last row's wall clock is read before its own evaluation, after all earlier ones
    assert len(calls) >= 3 and summary["wall_time"] - summary["train_time"] >= 0.4 * (len(calls) - 1) * 0.9
    assert slow["step"] == fast["step"]  # same seed, same batches: the same evaluation meets the target
    # Counted, the sleeps before the hit would add 0.4 s per earlier evaluation to the score.
    assert abs(slow["time"] - fast["time"]) < 0.5, (fast, slow)


def test_time_and_step_budgets_are_enforced(tmp_path):
    score, _ = _run(replace(TINY_PARITY, time_budget=1e-4), tmp_path, "time")
    summary = RunDir(tmp_path / "time").summary()
    assert summary["status"] == "out_of_time" and summary["steps"] == 20  # stopped at the first check
    assert not score["reached"] and score["time"] is None
    score, _ = _run(replace(TINY_PARITY, steps=20), tmp_path, "steps")  # the target needs ~40-60 steps
    assert RunDir(tmp_path / "steps").summary()["steps"] == 20
    assert not score["reached"]
    rows = RunDir(tmp_path / "steps").metrics()
    assert rows[-1]["step"] == 20
