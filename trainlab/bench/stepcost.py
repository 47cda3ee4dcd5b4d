"""The ``cost`` clock: optimizer steps to target, each charged what the submission's step costs, with every
submission's step measured side by side in one process.

Why. A trial's wall seconds depend on what else the machine runs, and so, less, do its CPU seconds (a busy
neighbour still slows a trial's own instructions through shared caches and memory bandwidth: the baseline
benched beside two busy processes scored 0.076 lower on the CPU clock, benchmarks/RESULTS.md). Steps to target
do not depend on the load at all, but are blind to what a step costs (Muon's Newton–Schulz, LAMB's norms,
GrokAlign's double backward). The cost clock multiplies the two: a trial's time to target is

    step at the target × c[s, w] / c[base, w] × c[base, w]

where ``c[s, w]`` is the seconds of one training step of submission ``s`` on workload ``w`` and the ratio
``c[s, w] / c[base, w]`` is measured in one process, *interleaved*: for each workload every submission's
training is built (its first trial's exact configuration: model, data, batch, optimizer, schedule,
regularisers, seed), warmed up, then timed for a block of steps in turn, in rounds whose order rotates
(and reverses every other round, so a drift of the machine falls on all alike). The ratio is the median over
rounds of the per-step time of ``s``'s block over the reference's block of the same round: load that
comes and goes hits both blocks of a round, so it cancels. ``c[base, w]`` (the reference's median seconds
per step) only sets the unit, seconds; scores, speedups and verdicts use ratios and do not depend on it.
The reference is the baseline, or the first submission of a bench without one.

Only training steps are timed (the trainer's own :func:`trainlab.train.loop.train_step`: batch, forward,
loss and regularisers, backward, clipping, the optimizer's step, the schedule), as AlgoPerf counts training
time only: evaluation, data building and start-up are not charged.

Assumptions, stated: a step's cost does not depend on the hyperparameter values a search space tunes (true of
learning rates and weight decays; a search space over ``batch_size`` is refused on this clock), nor on how far
training has gone (a submission whose step changes cost over training -- AutoLRS's search stages -- is charged
its cost over the measured steps, from step 0). The measurement runs on the machine that runs the bench, one
process, ``threads`` torch threads (default 1, as the bench's trials on a shared machine).
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from trainlab.errors import BenchError, one_line
from trainlab.rundir.atomic import atomic_write_text

COST_FILE = "step_costs.json"
ROUNDS = 21  # timed blocks per submission and workload
BLOCK_SECONDS = 0.2  # the length of one timed block (about): blocks of 0.05 s varied +-15% under load
WARMUP_STEPS = 5  # untimed steps first (allocator, first-call dispatch, lazy optimizer state)
MAX_BLOCK_STEPS = 500


@dataclass(frozen=True)
class CostJob:
    """What to time: submission ``submission`` on workload ``workload`` with the trainer overrides of one of its
    trials (``submission_file``: a Python-file submission, registered in the measuring process)."""

    submission: str
    workload: str
    overrides: tuple[str, ...]
    submission_file: str | None = None


def jobs_from_records(records: Iterable[Mapping[str, Any]]) -> list[CostJob]:
    """One :class:`CostJob` per (submission, workload) of a bench's base trials: the configuration of its first
    trial (lowest study, then trial). A trial whose search space tunes ``batch_size`` is refused: its step's cost
    would depend on the point."""
    first: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in records:
        if row.get("kind") != "bench" or row.get("variant") != "base":
            continue
        if "batch_size" in (row.get("hyperparameters") or {}):
            raise BenchError(f"submission {row['submission']!r} tunes batch_size, which changes what a step costs; "
                             "score it with --clock cpu, wall or steps")
        key = (row["submission"], row["workload"])
        if key not in first or (row["study"], row["trial"]) < (first[key]["study"], first[key]["trial"]):
            first[key] = row
    return [CostJob(sub, workload, tuple(row["overrides"]), row.get("submission_file"))
            for (sub, workload), row in first.items()]


# ---------------------------------------------------------------------------------------------------------
# Measuring (in a fresh process by default)


def measure(jobs: Sequence[CostJob], *, rounds: int = ROUNDS, block_seconds: float = BLOCK_SECONDS,
            warmup: int = WARMUP_STEPS, threads: int = 1, in_process: bool = False,
            progress: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Time every job's training step, interleaved per workload; ``{workload: {submission: entry}}`` with
    ``entry = {"seconds_per_step", "blocks" (seconds per step of each round's block), "steps_per_block",
    "overrides"}``. Runs in one fresh process like a trial's (:func:`trainlab.bench.runner.call_in_process`:
    a submission's module state stays out of the bench's process; a Python-file submission is imported there
    only), with ``threads`` torch threads (the trials'), or in this one with ``in_process=True``."""
    if rounds < 1 or block_seconds <= 0 or warmup < 1:
        raise ValueError("rounds and warmup must be >= 1 and block_seconds > 0")
    args = (list(jobs), rounds, block_seconds, warmup, threads, progress)
    if in_process:
        return _measure(*args)
    from trainlab.bench.runner import call_in_process

    outcome = call_in_process(_measure_child, args, threads=threads)  # the trials' kind of process
    if "error" in outcome:
        raise BenchError(outcome["error"] if outcome["error"].startswith("step costs:")
                         else f"step costs: the measuring process failed ({outcome['error']})")
    return outcome["workloads"]


def _measure_child(*args: Any) -> dict[str, Any]:
    try:
        return {"workloads": _measure(*args)}
    except BenchError as err:
        return {"error": str(err)}


def _measure(jobs: list[CostJob], rounds: int, block_seconds: float, warmup: int, threads: int,
             progress: bool) -> dict[str, dict[str, dict[str, Any]]]:
    import torch

    torch.set_num_threads(max(1, threads))
    by_workload: dict[str, list[CostJob]] = {}
    for job in jobs:
        by_workload.setdefault(job.workload, []).append(job)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for n, (workload, group) in enumerate(by_workload.items(), 1):
        if progress:
            print(f"step costs: {workload} ({n}/{len(by_workload)}), {len(group)} submissions side by side",
                  file=sys.stderr, flush=True)
        steppers = [_Stepper(job) for job in group]
        for stepper in steppers:
            stepper.size_block(warmup, block_seconds)
        blocks: list[list[float]] = [[] for _ in steppers]
        for r in range(rounds):
            order = list(range(len(steppers)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order if r % 2 == 0 else reversed(order):
                blocks[i].append(steppers[i].time_block())
        out[workload] = {s.job.submission: {"seconds_per_step": statistics.median(b), "blocks": b,
                                            "steps_per_block": s.block, "overrides": list(s.job.overrides)}
                         for s, b in zip(steppers, blocks)}
    return out


class _Stepper:
    """One submission's training on one workload, stepped by the trainer's own ``train_step``; rebuilt from step 0
    (untimed) when the next block would pass the trial's step budget."""

    def __init__(self, job: CostJob) -> None:
        self.job = job
        self.block = 1
        from trainlab.train.config import from_cli

        try:
            if job.submission_file:
                from trainlab.bench.submission import register_file

                register_file(job.submission_file)
            self.cfg = from_cli(None, list(job.overrides))
            self._build()
        except Exception as err:  # noqa: BLE001 -- a submission's mistake names the submission
            raise BenchError(f"step costs: {job.submission} on {job.workload} could not be built: "
                             f"{type(err).__name__}: {one_line(err)}") from None

    def _build(self) -> None:
        from trainlab.distributed.env import DistEnv
        from trainlab.train.state import TrainState
        from trainlab.train.training import build_training

        self.training = build_training(self.cfg, DistEnv())
        self.state = TrainState.fresh(self.training)

    @property
    def budget(self) -> int:
        return int(self.cfg.train.steps)  # type: ignore[arg-type]

    def _ready(self, n: int) -> None:
        """Make room for ``n`` more steps within the trial's step budget: past it, rebuild from step 0 and take
        one step (untimed, as the warm-up's first steps are)."""
        if self.state.step + n > self.budget:
            self._build()
            self._run(1)

    def _run(self, n: int) -> float:
        """Take ``n`` steps; returns the process CPU seconds they took."""
        from trainlab.train.loop import train_step

        loss = None
        start = time.process_time()
        for _ in range(n):
            loss = train_step(self.training, self.state)
        if loss is not None:
            loss.item()  # waits for the device (a no-op wait on the CPU)
        return time.process_time() - start

    def size_block(self, warmup: int, block_seconds: float) -> None:
        """Warm up, then choose the block's step count so that a block takes about ``block_seconds`` (and fits
        the step budget beside the rebuilt training's first step)."""
        self._ready(2 * warmup)
        self._run(warmup)
        per_step = self._run(warmup) / warmup
        self.block = max(1, min(MAX_BLOCK_STEPS, self.budget - 1, round(block_seconds / max(per_step, 1e-9))))

    def time_block(self) -> float:
        """Seconds per step over one block."""
        self._ready(self.block)
        return self._run(self.block) / self.block


# ---------------------------------------------------------------------------------------------------------
# From measurements to the clock


def paired_ratios(costs: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str
                  ) -> dict[str, dict[str, list[float]]]:
    """``{workload: {submission: [per round: s's seconds per step / the reference's, same round]}}``; a workload
    without the reference gives none."""
    out: dict[str, dict[str, list[float]]] = {}
    for workload, per in costs.items():
        if reference in per:
            ref = per[reference]["blocks"]
            out[workload] = {s: [b / r for b, r in zip(e["blocks"], ref)] for s, e in per.items()}
    return out


def relative(costs: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str) -> dict[str, dict[str, float]]:
    """``{workload: {submission: c[s, w] / c[ref, w]}}``: the median over rounds of :func:`paired_ratios`."""
    return {w: {s: statistics.median(r) for s, r in per.items()} for w, per in paired_ratios(costs, reference).items()}


def cost_seconds(costs: Mapping[str, Mapping[str, Mapping[str, Any]]], reference: str) -> dict[str, dict[str, float]]:
    """``{workload: {submission: seconds charged per step}}``: the relative cost times the reference's median
    seconds per step (the unit)."""
    rel = relative(costs, reference)
    return {w: {s: r * float(costs[w][reference]["seconds_per_step"]) for s, r in per.items()}
            for w, per in rel.items()}


def with_cost_time(records: Iterable[Mapping[str, Any]], per_step: Mapping[str, Mapping[str, float]],
                   reference: str) -> list[dict[str, Any]]:
    """Copies of bench ``records`` whose score has ``cost_time``: the step at the target times the submission's
    seconds per step on that workload (:func:`cost_seconds`), None for a miss or where no cost was measured
    (a held-out variant's trial is charged its base workload's cost); and ``cost_budget``, the step budget
    at the reference's seconds per step (what AlgoPerf's convention charges a miss)."""
    out = []
    for row in records:
        row = dict(row)
        score = dict(row.get("score") or {})
        costs = per_step.get(str(row.get("workload")), {})
        c, step = costs.get(str(row.get("submission"))), score.get("step")
        score["cost_time"] = None if c is None or not score.get("reached") or step is None else float(step) * c
        row["score"] = score
        if reference in costs and isinstance(row.get("step_budget"), (int, float)):
            row["cost_budget"] = float(row["step_budget"]) * costs[reference]
        out.append(row)
    return out


def missing(costs: Mapping[str, Mapping[str, Any]], jobs: Sequence[CostJob]) -> list[CostJob]:
    """The jobs ``costs`` has no measurement of with the same overrides."""
    return [j for j in jobs if list(j.overrides) != (costs.get(j.workload, {}).get(j.submission) or {}).get("overrides")]


# ---------------------------------------------------------------------------------------------------------
# The file


def load_costs(out_dir: str | Path) -> dict[str, Any] | None:
    """``OUT/step_costs.json`` (None if absent)."""
    path = Path(out_dir) / COST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BenchError(f"{path} cannot be read ({one_line(err)}); delete it to measure the step costs again") from None
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), dict):
        raise BenchError(f"{path} is not a step-cost file; delete it to measure the step costs again")
    return data


def ensure_costs(out_dir: str | Path, records: Sequence[Mapping[str, Any]], *, threads: int = 1,
                 rounds: int = ROUNDS, block_seconds: float = BLOCK_SECONDS, in_process: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """The step costs of ``out_dir``'s bench: read from ``step_costs.json`` when it holds every (submission,
    workload) of ``records`` with the same configuration, else all measured again side by side (a partial
    re-measurement would not be side by side) and written."""
    jobs = jobs_from_records(records)
    data = load_costs(out_dir)
    if data is not None and not missing(data["workloads"], jobs):
        return data
    if progress:
        print(f"trainlab: measuring the step costs of {len({j.submission for j in jobs})} submissions on "
            f"{len({j.workload for j in jobs})} workloads side by side ({rounds} rounds; about "
            f"{len(jobs) * (rounds * block_seconds + 1.5):.0f} s)", file=sys.stderr)
    workloads = measure(jobs, rounds=rounds, block_seconds=block_seconds, threads=threads, in_process=in_process,
                        progress=progress)
    data = {"procedure": "seconds per training step (trainlab.train.loop.train_step), each submission's first "
                         "trial configuration, measured side by side in one process: per workload, rounds of one "
                         "timed block per submission in rotating order; see trainlab.bench.stepcost",
            "rounds": rounds, "block_seconds": block_seconds, "threads": threads,
            "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}",
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "workloads": workloads}
    atomic_write_text(Path(out_dir) / COST_FILE, json.dumps(data, indent=1) + "\n")
    return data
