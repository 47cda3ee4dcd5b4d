"""The bench's CPU clock (issue 12): a trial's score carries the trainer's ``cpu_time`` at the first evaluation
meeting the target and the run's total, beside the wall clock; runs and records from before the CPU clock give
None, never an error. Hand-written rows and run directories, no training."""

import math

import pytest

from trainlab.bench.timing import MISS, Hit, TrialScore, first_hit, score_rows, score_run
from trainlab.rundir import SUMMARY, RunDir

ROWS = [{"step": 0, "time": 0.0, "cpu_time": 0.0, "wall": 0.3, "val_acc": 0.1},
        {"step": 10, "time": 1.0, "cpu_time": 0.75, "wall": 1.5, "val_acc": 0.5},
        {"step": 15, "time": 1.5, "cpu_time": 1.0, "wall": 2.0, "probe": 1.0},  # a probe's row: no evaluation
        {"step": 20, "time": 2.0, "cpu_time": 1.5, "wall": 3.0, "val_acc": 0.95},
        {"step": 30, "time": 3.0, "cpu_time": 2.25, "wall": 4.0, "val_acc": 0.99}]
OLD_ROWS = [{k: v for k, v in row.items() if k != "cpu_time"} for row in ROWS]  # written before the CPU clock


def test_first_hit_has_the_cpu_time_of_the_row_meeting_the_target():
    assert first_hit(ROWS, "val_acc", 0.9, True) == Hit(2.0, 20, 1.5)
    assert first_hit(ROWS, "val_acc", 0.98, True) == Hit(3.0, 30, 2.25)
    assert first_hit(ROWS, "val_acc", 0.3, False) == Hit(0.0, 0, 0.0)  # lower is better
    assert first_hit(ROWS, "val_acc", 0.9, True, time_budget=2.0, step_budget=20) == Hit(2.0, 20, 1.5)
    # the budgets stay on the wall clock: 1.5 CPU seconds are within 1.9, the 2.0 wall seconds are not
    assert first_hit(ROWS, "val_acc", 0.9, True, time_budget=1.9) == MISS
    assert first_hit(ROWS, "val_acc", 0.999, True) == MISS == Hit(math.inf, None, math.inf)
    assert score_rows(ROWS, "val_acc", 0.9, True) == (2.0, 20)  # unchanged: (wall time, step)


def test_rows_without_cpu_time_give_none():
    assert first_hit(OLD_ROWS, "val_acc", 0.9, True) == Hit(2.0, 20, None)
    assert first_hit(OLD_ROWS, "val_acc", 0.999, True) == MISS
    nulled = [{**row, "cpu_time": None} for row in ROWS]
    assert first_hit(nulled, "val_acc", 0.9, True) == Hit(2.0, 20, None)


def _run_dir(path, rows, summary):
    rd = RunDir(path)
    rd.create()
    for row in rows:
        rd.append_metrics(row)
    rd.write_json(SUMMARY, summary)
    return path


def test_score_run_reads_both_clocks(tmp_path):
    run = _run_dir(tmp_path / "new", ROWS, {"status": "completed", "steps": 30, "train_time": 3.0, "cpu_time": 2.25})
    score = score_run(run, "val_acc", 0.9, True)
    assert (score.reached, score.time, score.step, score.cpu_time) == (True, 2.0, 20, 1.5)
    assert (score.train_time, score.cpu_train_time) == (3.0, 2.25)
    assert score.to_dict()["cpu_time"] == 1.5 and score.to_dict()["cpu_train_time"] == 2.25
    assert TrialScore.from_dict(score.to_dict()) == score

    missed = score_run(run, "val_acc", 0.999, True)
    assert not missed.reached and missed.time == math.inf and missed.cpu_time == math.inf
    assert missed.cpu_train_time == 2.25
    written = missed.to_dict()
    assert written["time"] is None and written["cpu_time"] is None  # JSON has no inf
    assert TrialScore.from_dict(written) == missed

    study = score_run(run, "val_acc", None, True)  # a study's trial: no target
    assert study.cpu_time == math.inf and study.best == 0.99


def test_score_run_of_a_run_from_before_the_cpu_clock(tmp_path):
    run = _run_dir(tmp_path / "old", OLD_ROWS, {"status": "completed", "steps": 30, "train_time": 3.0})
    score = score_run(run, "val_acc", 0.9, True)
    assert (score.reached, score.time, score.step) == (True, 2.0, 20)
    assert score.cpu_time is None and score.cpu_train_time is None
    assert TrialScore.from_dict(score.to_dict()) == score


@pytest.mark.parametrize("record", [
    # a results.jsonl score written before the CPU clock (benchmarks/studies/transfer_results.jsonl's first line)
    {"reached": False, "time": None, "step": None, "best": 1.681728622108698, "status": "completed",
     "train_time": 1.949, "steps": 300},
    {"reached": True, "time": 2.5, "step": 40, "best": 0.97, "status": "reached_target", "train_time": 2.5,
     "steps": 40},
])
def test_old_records_load(record):
    score = TrialScore.from_dict(record)
    assert score.cpu_train_time is None
    if score.reached:
        assert score.time == 2.5 and score.cpu_time is None  # a hit of unknown CPU time
    else:
        assert score.time == math.inf and score.cpu_time == math.inf  # a miss is a miss on every clock
    again = score.to_dict()
    assert {k: v for k, v in again.items() if k not in ("cpu_time", "cpu_train_time")} == record
    assert TrialScore.from_dict(again) == score
