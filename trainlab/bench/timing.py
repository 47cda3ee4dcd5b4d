"""The score of one trial, read from its run directory: time and step at the first evaluation meeting the target.

Only the submission's training time counts: ``metrics.jsonl``'s ``time`` column is the trainer's clock of
optimizer steps, paused for evaluation, logging and checkpointing (``trainlab.train.loop``). A trial
reaches its target at the first evaluation whose validation metric meets it *within both budgets*
(training time <= time budget and step <= step budget); otherwise it is a miss (time ``inf``, step None),
also when it diverged, ran out of time or was interrupted before.

Beside the wall clock, the score carries the trainer's CPU clock (``cpu_time``: the trial process's CPU seconds,
all its threads, in the same stretches of the loop), which a loaded neighbour on the same cores barely moves.
The budgets stay on the wall clock. Runs written before the CPU clock have no ``cpu_time`` column: their
``cpu_time`` is None (unknown) when they reached the target, and records written before it load the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

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
    # CPU training seconds at the first evaluation meeting the target: inf for a miss, None for a hit in a run
    # whose rows have no cpu_time (written before the CPU clock)
    cpu_time: float | None = None
    cpu_train_time: float | None = None  # the run's total CPU training seconds (None before the CPU clock)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = None if math.isinf(self.time) else self.time
        out["cpu_time"] = None if self.cpu_time is None or math.isinf(self.cpu_time) else self.cpu_time
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrialScore:
        """The score :meth:`to_dict` wrote; a record written before the CPU clock (no ``cpu_time`` /
        ``cpu_train_time`` keys) loads with ``cpu_time`` inf for a miss and None for a hit."""
        d = dict(d)
        d["time"] = math.inf if d.get("time") is None else float(d["time"])
        cpu = d.get("cpu_time")
        d["cpu_time"] = float(cpu) if cpu is not None else None if d.get("reached") else math.inf
        d.setdefault("cpu_train_time", None)
        return TrialScore(**d)


class Hit(NamedTuple):
    """When a trial first met its target: wall training seconds (inf for a miss), the step (None for a miss) and
    CPU training seconds (inf for a miss; None when the row meeting it has no ``cpu_time``)."""

    time: float
    step: int | None
    cpu_time: float | None


MISS = Hit(math.inf, None, math.inf)


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


def first_hit(rows: list[dict[str, Any]], metric: str, target: float, higher_is_better: bool, *,
              time_budget: float | None = None, step_budget: int | None = None) -> Hit:
    """The :class:`Hit` of the first row meeting ``target`` within the budgets (``time_budget`` is on the wall
    clock, ``time``); :data:`MISS` for a miss."""
    for row in rows:
        time, step = row.get("time"), row.get("step")
        if metric not in row or time is None or step is None:
            continue  # not an evaluation row (e.g. a probe's)
        if (time_budget is not None and time > time_budget) or (step_budget is not None and step > step_budget):
            break
        if meets(row[metric], target, higher_is_better):
            cpu = row.get("cpu_time")
            return Hit(float(time), int(step), float(cpu) if _is_number(cpu) else None)
    return MISS


def score_rows(rows: list[dict[str, Any]], metric: str, target: float, higher_is_better: bool, *,
               time_budget: float | None = None, step_budget: int | None = None) -> tuple[float, int | None]:
    """(time, step) of the first row meeting ``target`` within the budgets; (inf, None) for a miss
    (:func:`first_hit` has the CPU clock too)."""
    hit = first_hit(rows, metric, target, higher_is_better, time_budget=time_budget, step_budget=step_budget)
    return hit.time, hit.step


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    hit = MISS if target is None else first_hit(
        rows, metric, target, higher_is_better, time_budget=time_budget, step_budget=step_budget)
    return TrialScore(
        reached=hit.step is not None, time=hit.time, step=hit.step, best=best_value(rows, metric, higher_is_better),
        status=str(summary.get("status", "missing")), train_time=summary.get("train_time"),
        steps=summary.get("steps"), cpu_time=hit.cpu_time, cpu_train_time=summary.get("cpu_time"),
    )


CLOCKS = ("cost", "cpu", "wall", "steps")
CLOCK_UNITS = {"cost": "step-cost seconds", "cpu": "CPU seconds", "wall": "seconds", "steps": "steps"}


def clock_value(score: dict[str, Any], clock: str) -> float:
    """A trial's time to target on ``clock`` from its record's score: ``cost`` (steps to target times the
    submission's seconds per step, measured side by side: :mod:`trainlab.bench.stepcost`, which puts
    ``cost_time`` in the score), ``cpu`` (the trial's CPU seconds of training), ``wall`` (training seconds) or
    ``steps`` (optimizer steps; exact, but blind to a step's cost); ``inf`` for a miss. A record that reached the
    target without a time on ``clock`` (a CPU time written before the CPU clock; no step cost) is a ValueError."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; allowed: {', '.join(CLOCKS)}")
    key = {"cost": "cost_time", "cpu": "cpu_time", "wall": "time", "steps": "step"}[clock]
    value = score.get(key)
    if value is None:
        if clock == "cpu" and score.get("reached"):
            raise ValueError("a record that reached its target has no cpu_time (written before the CPU clock); "
                             "score it with --clock wall or steps")
        if clock == "cost" and score.get("reached"):
            raise ValueError("a record that reached its target has no step cost (trainlab.bench.stepcost measures "
                             "them); score it with another --clock")
        return math.inf
    return float(value)

