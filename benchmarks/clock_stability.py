#!/usr/bin/env python
"""Clock stability (issue 12): which clock of a bench trial does a busy neighbour move?

One fixed bench trial (by default the tuned NAdamW baseline on ``mnist1d_mlp``, the bench's own workload, target
and search-space point) is trained ``--repeats`` times on a quiet machine, then ``--repeats`` times beside
``--neighbours`` processes that burn CPU in a busy loop (started before, killed after). Every trial is a fresh
process with ``OMP_NUM_THREADS`` and torch's threads set to ``--threads``, trained through the bench's own
``runner.execute`` and scored by ``trainlab.bench.timing.score_run``, as a bench worker does. The trials are
identical (same seed), so any spread is the clock's.

For each clock at the first evaluation meeting the target -- wall training seconds (``time``), the trial
process's CPU seconds in the same stretches of the loop (``cpu_time``) and optimizer steps -- it reports, per
condition, the median, the spread (SD of the natural log of the values, and max/min) and the ratio of the loaded
median to the quiet one. The workload's wall-clock time budget is lifted (``--time-budget``, default 1e4 s), so
that a slow loaded trial is measured, not cut off.

Nothing here asserts a timing: it measures and prints a markdown table (``--out FILE`` writes it too)::

    python benchmarks/clock_stability.py                                # 5 quiet + 5 loaded, 2 neighbours
    python benchmarks/clock_stability.py --repeats 3 --neighbours 4 --out clock.md
    python benchmarks/clock_stability.py --workload sparse_parity --submission "adamw optimizer.lr=1e-2"
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from trainlab.bench import plan, suite
from trainlab.bench.runner import Trial
from trainlab.bench.submission import parse
from trainlab.bench.timing import score_run

CLOCKS = (("wall training s to target (`time`)", "time"), ("CPU s to target (`cpu_time`)", "cpu_time"),
          ("steps to target", "step"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", default="mnist1d_mlp", help="a bench workload (default: mnist1d_mlp)")
    p.add_argument("--submission", default="nadamw", help="a bench submission (default: the nadamw baseline)")
    p.add_argument("--hp", default=None, help="hyperparameters as JSON (default: the workload's tuned baseline "
                                              "lr and weight decay)")
    p.add_argument("--repeats", type=int, default=5, help="trials per condition (default 5)")
    p.add_argument("--neighbours", type=int, default=2, help="busy-loop processes beside the loaded trials (2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each trial (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=1e4, help="the trials' wall time budget (s)")
    p.add_argument("--dir", default=None, help="where the trials' run directories go (default: a temporary one)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--json", default=None, help="also write every trial's score as JSON")
    p.add_argument("--run-trial", nargs=2, metavar=("DIR", "TRIAL_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_trial:
        return _child(args.run_trial[0], args.run_trial[1], threads=args.threads)
    if args.repeats < 2:
        p.error("--repeats must be at least 2 (a spread needs two values)")

    trial = build_trial(args)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="clock-stability-"))
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"clock stability: {trial.meta['workload']} / {args.submission} {trial.meta['hyperparameters']}, "
          f"{args.repeats} quiet + {args.repeats} loaded trials ({args.neighbours} neighbours), threads "
          f"{args.threads}, in {root}", file=sys.stderr)
    conditions: dict[str, dict[str, Any]] = {}
    for name, neighbours in (("quiet", 0), ("loaded", args.neighbours)):
        conditions[name] = run_condition(trial, root / name, args.repeats, neighbours, args.threads)
    ended = datetime.datetime.now(datetime.timezone.utc)
    table = render(args, trial, conditions, started, ended)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v["scores"] for k, v in conditions.items()}, indent=1) + "\n")
    return 0


def build_trial(args: argparse.Namespace) -> Trial:
    """The one trial every repeat trains: the bench's own trial of the submission on the workload."""
    workload = suite.WORKLOADS.get(args.workload).meta["spec"]
    workload = replace(workload, target=workload.resolved_target(), time_budget=args.time_budget)
    sub = parse(args.submission)
    if args.hp is not None:
        hp = json.loads(args.hp)
    else:
        base = workload.baseline
        hp = {f"optimizer.{k}": v for k, v in base.items() if k in ("lr", "weight_decay")}
    return plan.bench_trial(workload, sub, ruleset="external", study=0, index=0, seed=args.seed,
                            hyperparameters=hp, suite="clock-stability")


def run_condition(trial: Trial, root: Path, repeats: int, neighbours: int, threads: int) -> dict[str, Any]:
    """Train ``trial`` ``repeats`` times in fresh processes, beside ``neighbours`` busy loops."""
    root.mkdir(parents=True, exist_ok=True)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
    try:
        if burners:
            time.sleep(1.0)  # let the neighbours get going
        load_start = os.getloadavg()[0]
        scores = []
        for i in range(repeats):
            scores.append(run_one(trial, root / f"r{i}", threads))
            s = scores[-1]
            print(f"  {root.name} {i + 1}/{repeats}: step {s['step']}, {s['time']} s wall, {s['cpu_time']} s CPU",
                  file=sys.stderr)
        load_end = os.getloadavg()[0]
    finally:
        for b in burners:
            b.kill()
        for b in burners:
            b.wait()
    return {"scores": scores, "load": (load_start, load_end), "neighbours": neighbours}


def run_one(trial: Trial, run_dir: Path, threads: int) -> dict[str, Any]:
    """One trial in a fresh process (as a bench worker runs it); its score."""
    spec = json.dumps(asdict(trial))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, __file__, "--threads", str(threads), "--run-trial", str(run_dir), spec],
                   env=env, check=True)
    score = score_run(run_dir, trial.metric, trial.target, trial.higher_is_better,
                      time_budget=trial.time_budget, step_budget=trial.step_budget)
    if not score.reached:
        raise SystemExit(f"{run_dir}: the trial missed its target ({score.status}); the clocks have nothing to time")
    return score.to_dict()


def _child(run_dir: str, trial_json: str, threads: int) -> int:
    from trainlab.bench import runner

    d = json.loads(trial_json)
    trial = Trial(**{**d, "overrides": tuple(d["overrides"])})
    outcome = runner.execute(trial, run_dir, threads=threads)
    if "error" in outcome:
        print(outcome["error"], file=sys.stderr)
        return 1
    return 0


def spread(values: list[float]) -> dict[str, float]:
    """Median, SD of the natural logs (n - 1) and max/min of positive ``values``."""
    logs = [math.log(v) for v in values]
    return {"median": statistics.median(values), "sd_log": statistics.stdev(logs) if len(logs) > 1 else 0.0,
            "ratio": max(values) / min(values)}


def _fmt(value: float, key: str) -> str:
    return f"{value:.0f}" if key == "step" else f"{value:.3f}"


def render(args: argparse.Namespace, trial: Trial, conditions: dict[str, dict[str, Any]],
           started: datetime.datetime, ended: datetime.datetime) -> str:
    quiet, loaded = conditions["quiet"], conditions["loaded"]
    lines = [
        f"Trial: bench workload `{trial.meta['workload']}` (target {trial.metric} "
        f"{'>=' if trial.higher_is_better else '<='} {trial.target:g}), submission `{args.submission}` with "
        f"{json.dumps(trial.meta['hyperparameters'])}, seed {args.seed}, {args.threads} torch thread(s), "
        f"OMP_NUM_THREADS={args.threads}; {args.repeats} quiet trials, then {args.repeats} beside "
        f"{args.neighbours} busy-loop neighbour processes. Each trial is a fresh process (the bench's "
        f"`runner.execute`), scored by `trainlab.bench.timing.score_run`.",
        f"Load average (1 min) at the start → end of each condition: quiet {quiet['load'][0]:.2f} → "
        f"{quiet['load'][1]:.2f}, loaded {loaded['load'][0]:.2f} → {loaded['load'][1]:.2f}. "
        f"{os.cpu_count()} logical cores; "
        f"{started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC.",
        "",
        "| clock | quiet median | quiet SD(log) | quiet max/min | loaded median | loaded SD(log) | loaded max/min "
        "| loaded / quiet (medians) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in CLOCKS:
        q = spread([float(s[key]) for s in quiet["scores"]])
        lo = spread([float(s[key]) for s in loaded["scores"]])
        lines.append(f"| {label} | {_fmt(q['median'], key)} | {q['sd_log']:.3f} | {q['ratio']:.2f} | "
                     f"{_fmt(lo['median'], key)} | {lo['sd_log']:.3f} | {lo['ratio']:.2f} | "
                     f"{lo['median'] / q['median']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
