"""The score of one trial, read from its run directory: time and step at the first evaluation meeting the target.

Only the submission's training time counts: ``metrics.jsonl``'s ``time`` column is the trainer's clock of
optimizer steps, paused for evaluation, logging and checkpointing (``trainlab.train.loop``). A trial
reaches its target at the first evaluation whose validation metric meets it *within both budgets*
(training time <= time budget and step <= step budget); otherwise it is a miss (time ``inf``, step None),
also when it diverged, ran out of time or was interrupted before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainlab.errors import RunDirError
from trainlab.rundir import RunDir

FINISHED = ("completed", "reached_target", "out_of_time", "diverged")


@dataclass(frozen=True)
class TrialScore:
    reached: bool
    time: float  # training seconds at the first evaluation meeting the target; inf for a miss
    step: int | None
    best: float | None  # best validation value seen (any budget)
    status: str  # the run's status (summary.json), "missing" without one
    train_time: float | None  # the run's total training seconds
    steps: int | None  # steps the run took

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = None if math.isinf(self.time) else self.time
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrialScore:
        d = dict(d)
        d["time"] = math.inf if d.get("time") is None else float(d["time"])
        return TrialScore(**d)


def finished(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` ended for a reason a rerun would not change (not interrupted).

    A trial whose ``summary.json`` cannot be read is not finished: the bench runs it again.
    """
    try:
        summary = RunDir(run_dir).summary()
    except RunDirError:
        return False
    return summary is not None and summary.get("status") in FINISHED


def meets(value: Any, target: float, higher_is_better: bool) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value >= target if higher_is_better else value <= target


def score_rows(rows: list[dict[str, Any]], metric: str, target: float, higher_is_better: bool, *,
               time_budget: float | None = None, step_budget: int | None = None) -> tuple[float, int | None]:
    """(time, step) of the first row meeting ``target`` within the budgets; (inf, None) for a miss."""
    for row in rows:
        time, step = row.get("time"), row.get("step")
        if metric not in row or time is None or step is None:
            continue  # not an evaluation row (e.g. a probe's)
        if (time_budget is not None and time > time_budget) or (step_budget is not None and step > step_budget):
            break
        if meets(row[metric], target, higher_is_better):
            return float(time), int(step)
    return math.inf, None


def best_value(rows: list[dict[str, Any]], metric: str, higher_is_better: bool) -> float | None:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not values:
        return None
    return float(max(values) if higher_is_better else min(values))


def score_run(run_dir: str | Path, metric: str, target: float | None, higher_is_better: bool, *,
              time_budget: float | None = None, step_budget: int | None = None) -> TrialScore:
    """Score the run in ``run_dir``. With ``target`` None (a study's trial) only best value and status are read."""
    rd = RunDir(run_dir)
    rows = rd.metrics()
    summary = rd.summary() or {}
    time, step = (math.inf, None) if target is None else score_rows(
        rows, metric, target, higher_is_better, time_budget=time_budget, step_budget=step_budget)
    return TrialScore(
        reached=step is not None, time=time, step=step, best=best_value(rows, metric, higher_is_better),
        status=str(summary.get("status", "missing")), train_time=summary.get("train_time"),
        steps=summary.get("steps"),
    )
