"""Shared helpers of the paper-claim drivers (``experiments/*/run.py``): standard library + trainlab only.

A driver names its *arms* (one configuration each: a YAML file in the claim's directory plus overrides), the
seeds, and the columns of its table. :func:`main` then

1. trains every (arm, seed) in turn, one process at a time, with ``OMP_NUM_THREADS=1`` (the machine is a shared
   2-core box), as ``python -m trainlab run CONFIG.yaml OVERRIDES seed=S [workload.seed=S] --out
   runs/ARM-sS --quiet --no-report``. A run whose ``summary.json`` says it finished is skipped, an interrupted
   one is resumed (``--resume``), a directory without a summary is started afresh, so a driver can be killed
   and re-run at any time;
2. reads the run directories back (``summary.json``, ``metrics.jsonl``) and writes ``results.md``: one row per
   arm (median and range over the seeds) and one row per run.

The training command of every run is recorded in its ``summary.json`` (``command``) and in ``driver.json``
beside it (with the process's wall time, start-up and evaluation included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.errors import RunDirError
from trainlab.rundir import MANIFEST, RunDir

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
FINISHED = {"completed", "reached_target", "diverged", "out_of_time"}


@dataclass
class Arm:
    """One configuration of a claim: ``CONFIG.yaml`` (relative to the claim directory) plus overrides."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    label: str = ""  # shown in tables; default: name

    @property
    def title(self) -> str:
        return self.label or self.name


# ------------------------------------------------------------------------------------------- reading runs


class Run:
    """A finished run directory: its summary, its metrics rows, and a few accessors for the tables."""

    def __init__(self, path: Path) -> None:
        self.path = path
        rd = RunDir.open(path)
        summary = rd.summary()
        if summary is None:
            raise RunDirError(f"{rd.summary_path} not found: the run has not finished")
        self.summary = summary
        self.rows = rd.metrics(required=True)
        driver = path / "driver.json"
        self.driver = json.loads(driver.read_text()) if driver.is_file() else {}

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def steps(self) -> int:
        return self.summary["steps"]

    def event(self, name: str) -> int | None:
        return self.summary["events"].get(name)

    def final(self, key: str) -> float | None:
        """The last value of ``key`` in metrics.jsonl (the final row may be a probe-only row without it)."""
        vals = self.series(key)
        return vals[-1][1] if vals else None

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))
                and math.isfinite(r[key])]

    def max(self, key: str) -> float | None:
        vals = [v for _, v in self.series(key)]
        return max(vals) if vals else None

    def min(self, key: str) -> float | None:
        vals = [v for _, v in self.series(key)]
        return min(vals) if vals else None

    def late_median(self, key: str, frac: float = 0.5) -> float | None:
        """Median of ``key`` over the rows in the last ``frac`` of the run's steps."""
        vals = [v for s, v in self.series(key) if s >= (1 - frac) * self.steps]
        return statistics.median(vals) if vals else None

    def first_step(self, key: str, pred: Callable[[float], bool]) -> int | None:
        return next((s for s, v in self.series(key) if pred(v)), None)

    def at_step(self, key: str, step: int) -> float | None:
        """The value of ``key`` at the last row with ``step <= step``."""
        vals = [v for s, v in self.series(key) if s <= step]
        return vals[-1] if vals else None


# ------------------------------------------------------------------------------------------- formatting


def fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None:
        return "—"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e6 and spec == "d"):
        return f"{int(x)}"
    return format(x, spec)


def median_range(values: Sequence[float | None], spec: str = ".3g") -> str:
    """``median [min, max]`` of the non-missing values; ``(k/n)`` appended when some are missing."""
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    text = fmt(statistics.median(got), spec)
    if len(got) > 1:
        text += f" [{fmt(min(got), spec)}, {fmt(max(got), spec)}]"
    if len(got) < len(values):
        text += f" ({len(got)}/{len(values)})"
    return text


def event_cell(runs: Sequence[Run], name: str) -> str:
    """The step of event ``name``: median [range] over the runs that reached it, and how many did not."""
    steps = [r.event(name) for r in runs]
    got = [s for s in steps if s is not None]
    budget = max(r.summary["steps_planned"] for r in runs)
    if not got:
        return f"not within {budget} steps (0/{len(runs)})"
    text = median_range([float(s) for s in got], ".0f")
    if len(got) < len(runs):
        text += f" ({len(got)}/{len(runs)}; the others not within {budget} steps)"
    return text


@dataclass
class Column:
    """A table column: a header, a per-run value, and the format of the value."""

    header: str
    value: Callable[[Run], float | None]
    spec: str = ".3g"


def standard_columns() -> list[Column]:
    return [
        Column("memorized step", lambda r: r.event("memorized"), ".0f"),
        Column("generalized step", lambda r: r.event("generalized"), ".0f"),
        Column("final val acc", lambda r: r.final("val_acc"), ".4f"),
        Column("train time s", lambda r: r.summary["train_time"], ".1f"),
        Column("process wall s", lambda r: r.driver.get("process_wall_s"), ".1f"),
    ]


def paired_table(pairs: Sequence[tuple[str, str]], runs_of: Callable[[str], Sequence[tuple[int, Run]]],
                 seeds: Sequence[int], labels: dict[str, str],
                 metrics: Sequence[Callable[[Run], float]]) -> str:
    """Arm minus baseline per seed both trained with (same run seed), for each metric: the median [min, max]
    difference and in how many seeds it was positive; one row per (arm, baseline) pair."""
    rows = []
    for a, b in pairs:
        ra, rb = dict(runs_of(a)), dict(runs_of(b))
        common_seeds = [s for s in seeds if s in ra and s in rb]
        if not common_seeds:
            continue
        cells = []
        for f in metrics:
            d = [f(ra[s]) - f(rb[s]) for s in common_seeds]
            cells += [median_range(d, "+.4f"), f"{sum(x > 0 for x in d)}/{len(d)}"]
        rows.append([f"{labels[a]} − {labels[b]}", *cells])
    return table(["comparison", "final Δ", "seeds Δ > 0", "best Δ", "seeds Δ > 0"], rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- running


def run_dir(claim_dir: Path, arm: Arm, seed: int) -> Path:
    return claim_dir / "runs" / f"{arm.name}-s{seed}"


def has_summary(path: Path) -> bool:
    """Whether the run in ``path`` has ended (finished or interrupted: it wrote summary.json), so that
    :class:`Run` can read it."""
    return RunDir(path).summary_path.is_file()


def seed_overrides(seed: int, seed_keys: Sequence[str]) -> list[str]:
    return [f"{key}={seed}" for key in seed_keys]


def train_args(claim_dir: Path, arm: Arm, seed: int, seed_keys: Sequence[str]) -> list[str]:
    """Arguments after ``trainlab run`` (paths relative to the repository root)."""
    config = (claim_dir / arm.config).relative_to(REPO)
    out = run_dir(claim_dir, arm, seed).relative_to(REPO)
    return [str(config), *arm.overrides, *seed_overrides(seed, seed_keys), "--out", str(out), "--quiet",
            "--no-report"]


def shell_command(claim_dir: Path, arm: Arm, seed: int, seed_keys: Sequence[str]) -> str:
    return "OMP_NUM_THREADS=1 trainlab run " + shlex.join(train_args(claim_dir, arm, seed, seed_keys))


def train(claim_dir: Path, arm: Arm, seed: int, seed_keys: Sequence[str]) -> None:
    """Train (arm, seed) unless it has finished; resume it if it was interrupted."""
    path = run_dir(claim_dir, arm, seed)
    rd = RunDir(path)
    summary = rd.summary()
    resume = False
    if summary is not None:
        if summary.get("status") in FINISHED:
            print(f"  skip   {path.relative_to(EXPERIMENTS)} ({summary['status']})", flush=True)
            return
        resume = (rd.checkpoints / MANIFEST).is_file()
    if path.exists() and not resume:
        shutil.rmtree(path)  # a run that died before its first checkpoint: start it again
    args = [sys.executable, "-m", "trainlab", "run"]
    args += ["--resume", str(path), "--quiet", "--no-report"] if resume else train_args(claim_dir, arm, seed,
                                                                                          seed_keys)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"  {'resume' if resume else 'train '} {path.relative_to(EXPERIMENTS)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trainlab exited with {proc.returncode} for {path}")
    (path / "driver.json").write_text(json.dumps({
        "process_wall_s": round(wall, 2), "resumed": resume,
        "command": shell_command(claim_dir, arm, seed, seed_keys)}, indent=1))
    s = rd.summary()
    if s is None:
        raise SystemExit(f"trainlab wrote no summary.json in {path}")
    print(f"         {s['status']} at step {s['steps']}, {s['train_time']:.1f} s training, {wall:.1f} s process; "
          f"events {s['events']}", flush=True)


# ------------------------------------------------------------------------------------------- results


def results_markdown(claim_dir: Path, title: str, arms: Sequence[Arm], seeds: Sequence[int],
                     columns: Sequence[Column], seed_keys: Sequence[str], notes: str = "") -> str:
    out = [f"# {title}", ""]
    if notes:
        out += [notes.strip(), ""]
    per_arm_rows, per_run_rows, commands = [], [], []
    for arm in arms:
        pairs = [(s, Run(run_dir(claim_dir, arm, s))) for s in seeds if has_summary(run_dir(claim_dir, arm, s))]
        runs = [r for _, r in pairs]
        if not runs:
            per_arm_rows.append([arm.title, "0", *("not run" for _ in columns)])
            continue
        cells = []
        for col in columns:
            if col.header in ("memorized step", "generalized step"):
                cells.append(event_cell(runs, col.header.split()[0]))
            else:
                cells.append(median_range([col.value(r) for r in runs], col.spec))
        per_arm_rows.append([arm.title, str(len(runs)), *cells])
        for s, r in pairs:
            per_run_rows.append([arm.title, str(s), r.status, str(r.steps), *(fmt(c.value(r), c.spec)
                                                                               for c in columns)])
        commands.append(f"- {arm.title}: `{shell_command(claim_dir, arm, seeds[0], seed_keys)}`")
    out += ["## Over seeds (median [min, max])", ""]
    out += [table(["arm", "seeds", *(c.header for c in columns)], per_arm_rows), ""]
    out += ["## Per run", ""]
    out += [table(["arm", "seed", "status", "steps", *(c.header for c in columns)], per_run_rows), ""]
    out += ["## Commands (seed 0; the driver runs every seed)", "", *commands, "",
            (f"All of it: `python {claim_dir.relative_to(REPO)}/run.py` (skips finished runs; "
             "`--table` only rewrites this file)."), ""]
    return "\n".join(out)


def main(claim_dir: Path, title: str, arms: Sequence[Arm], seeds: Sequence[int], columns: Sequence[Column],
         *, seed_keys: Sequence[str] = ("seed", "workload.seed"), notes: str = "") -> None:
    parser = argparse.ArgumentParser(description=f"{title}: train every arm and seed, then write results.md")
    parser.add_argument("--table", action="store_true", help="only (re)write results.md from the run directories")
    parser.add_argument("--arms", nargs="*", help="only these arms (names)")
    parser.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    args = parser.parse_args()
    chosen_arms = [a for a in arms if not args.arms or a.name in args.arms]
    chosen_seeds = args.seeds if args.seeds else list(seeds)
    if not args.table:
        t0 = time.perf_counter()
        for seed in chosen_seeds:  # seed-major: a partial pass already compares the arms
            for arm in chosen_arms:
                train(claim_dir, arm, seed, seed_keys)
        print(f"driver wall time {time.perf_counter() - t0:.1f} s")
    text = results_markdown(claim_dir, title, arms, seeds, columns, seed_keys, notes)
    (claim_dir / "results.md").write_text(text)
    print(text)


# ------------------------------------------------------------------------------- continual sequences (claims 8, 9)
# Readers of ``summary.json["continual"]`` (trainlab/continual/metrics.py: the accuracy matrix, ACC, BWT, forgetting,
# min-ACC, WC-ACC and one stability-gap entry per (switch, old task)).


def continual(run: Run) -> dict:
    """The run's ``summary.json["continual"]`` entry (empty for a run that is no task sequence's)."""
    return run.summary.get("continual") or {}


def continual_value(key: str) -> Callable[[Run], float | None]:
    """A :class:`Column` value: ``summary.json["continual"][key]`` (``acc``, ``bwt``, ``forgetting``, ``min_acc``,
    ``wc_acc``, ``fwt``)."""
    return lambda run: continual(run).get(key)


def gap_pairs(run: Run) -> list[dict]:
    """The run's stability gaps (one dict per switch and old task, as trainlab writes them) with three more keys:
    ``end``, the old task's accuracy when the new task ended (the matrix entry ``R[switch][task]``); ``to_min``,
    the steps from the switch to the lowest accuracy; ``regained``, the part of the drop won back by the task's end,
    ``(end - min) / depth`` (None when the depth is 0)."""
    c = continual(run)
    matrix = c.get("matrix") or []
    out = []
    for gap in c.get("stability_gaps", []):
        row = matrix[gap["switch"]] if gap["switch"] < len(matrix) else None
        end = row[gap["task"]] if row is not None else None
        depth = gap["depth"]
        regained = (end - gap["min"]) / depth if end is not None and depth > 0 else None
        out.append({**gap, "end": end, "to_min": gap["min_step"] - gap["step"], "regained": regained})
    return out


def continual_columns() -> list[Column]:
    """ACC, BWT, forgetting, min-ACC and WC-ACC of ``summary.json``, and the cost of the run: training seconds and
    the run's wall seconds (evaluation included) from ``summary.json``, the whole process's from ``driver.json``."""
    return [
        Column("ACC", continual_value("acc"), ".3f"),
        Column("BWT", continual_value("bwt"), ".3f"),
        Column("forgetting", continual_value("forgetting"), ".3f"),
        Column("min-ACC", continual_value("min_acc"), ".3f"),
        Column("WC-ACC", continual_value("wc_acc"), ".3f"),
        Column("train s", lambda r: r.summary["train_time"], ".1f"),
        Column("run wall s", lambda r: r.summary.get("wall_time"), ".1f"),
        Column("process s", lambda r: r.driver.get("process_wall_s"), ".1f"),
    ]
