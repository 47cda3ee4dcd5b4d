"""``trainlab bench`` as a function: plan the trials, run them (resumably), gate, score, report.

Example::

    from trainlab.bench.bench import run_bench

    if __name__ == "__main__":    # workers are spawned processes: they import the calling script
        result = run_bench(["small"], ["adamw", "lion"], seeds=3, workers=2)
        print(result.text)        # the leaderboard's first table; files under result.out
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from trainlab.bench import plan, stepcost, submission
from trainlab.bench.report import BENCH_FILE, leaderboard_table, load, write_report
from trainlab.bench.runner import (BenchError, Trial, check_backend, check_trial_timeout, cores, default_workers,
                                   keep_records, load_records, run_trials, trial_threads)
from trainlab.bench.suite import HELDOUT, TARGETS_FILE, BenchWorkload, select, targets_file_data, with_targets
from trainlab.bench.timing import CLOCKS
from trainlab.bench.tuning import RULESETS
from trainlab.config import ConfigError
from trainlab.rundir.atomic import atomic_write_text


@dataclass
class BenchResult:
    out: Path
    files: list[Path]
    text: str


def run_bench(names: Sequence[str], submissions: Sequence[str], *, baseline: str | None = submission.BASELINE,
              ruleset: str = "external", seeds: int = 3, trials: int = 5, studies: int | None = None,
              workers: int | None = None, threads: int | None = None, backend: str = "process",
              heldout: bool = False, out: str | Path | None = None, resume: bool = False,
              progress: bool = True, targets: str | Path | None = None,
              trial_timeout: float | None = None, clock: str = "cost") -> BenchResult:
    """Bench ``submissions`` (``--submission`` specs) on the suites/workloads ``names``; see ``trainlab bench -h``.

    ``baseline`` is added unless already among them (None: none; speedups are then not computed).
    ``seeds`` repetitions for submissions without a search space (and self-tuning); ``studies`` x ``trials``
    for a search space under external tuning. ``heldout=True`` adds the held-out gate (off by default, as in AlgoPerf's rules since 2025). ``out`` defaults to
    ``results/SUITE``; an existing bench there is continued only with ``resume=True``. ``targets`` is a targets
    file written by ``set-targets`` to use instead of the packaged ``trainlab/bench/targets.json``.
    ``clock`` is what a time to target is counted in (:data:`~trainlab.bench.timing.CLOCKS`: by default steps
    charged each submission's step cost measured side by side after the trials, :mod:`trainlab.bench.stepcost`;
    the trials' CPU seconds, wall seconds, or steps). ``trial_timeout`` (seconds) replaces each trial's wall-clock limit (default: 4 x its time budget + 120 s;
    see :mod:`trainlab.bench.runner`).
    """
    if ruleset not in RULESETS:
        raise ConfigError("--ruleset", f"expected one of {', '.join(RULESETS)}, got {ruleset!r}")
    if clock not in CLOCKS:
        raise ConfigError("--clock", f"expected one of {', '.join(CLOCKS)}, got {clock!r}")
    check_backend(backend)
    workers = default_workers() if workers is None else workers
    check_trial_timeout(trial_timeout, workers, backend)
    label, workloads = select(list(names))
    targets_path = TARGETS_FILE if targets is None else Path(targets)
    if targets is not None:
        if not targets_path.is_file():
            raise ConfigError("--targets", f"{targets_path} is not a file (`trainlab bench set-targets` writes one)")
        workloads = [with_targets(w, targets_path) for w in workloads]
    subs = [submission.parse(s) for s in submissions]
    base_name = None
    if baseline:
        base = submission.parse(baseline)
        if base.name not in [s.name for s in subs]:
            subs.insert(0, base)
        base_name = base.name
    if not subs:
        raise ConfigError("--submission", "give at least one submission")
    seen: set[str] = set()
    for sub in subs:
        if sub.name in seen:
            raise ConfigError("--submission", f"two submissions are named {sub.name!r}; label one with name=LABEL")
        seen.add(sub.name)
    out_dir = Path(out) if out is not None else Path("results") / label
    if (out_dir / BENCH_FILE).is_file() and not resume:
        raise BenchError(f"{out_dir} already holds a bench; add --resume to continue it, or choose another --out")
    studies = studies or seeds

    phase1 = plan.base_trials(workloads, subs, ruleset=ruleset, seeds=seeds, studies=studies, trials=trials,
                              suite=label)
    _validate(phase1, workloads if heldout else [])
    info = _info(label, workloads, subs, base_name, ruleset=ruleset, seeds=seeds, studies=studies, trials=trials,
                 heldout=heldout, clock=clock, workers=workers, threads=threads,
                 backend=backend, trial_timeout=trial_timeout, targets_path=targets_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / BENCH_FILE, json.dumps(info, indent=1, default=str) + "\n")
    try:
        records = run_trials(phase1, out_dir, workers=workers, threads=threads, backend=backend, progress=progress,
                             label="bench", trial_timeout=trial_timeout)
        phase2: list[Trial] = []
        if heldout:
            # The step costs are measured after every trial; within one submission and workload every step costs
            # the same on the cost clock, so a study's best trial on it is its best in steps.
            phase2 = plan.heldout_trials(workloads, subs, records, ruleset=ruleset, suite=label,
                                         clock="steps" if clock == "cost" else clock)
            run_trials(phase2, out_dir, workers=workers, threads=threads, backend=backend, progress=progress,
                       label="held-out gate", trial_timeout=trial_timeout)
    except KeyboardInterrupt:
        print(f"trainlab: bench interrupted; finished trials are kept: rerun the same command with --out {out_dir} "
              "--resume", file=sys.stderr)
        raise
    keep_records(out_dir, [t.id for t in [*phase1, *phase2]])
    if clock == "cost":
        # timed with the trials' thread count: how a step's cost scales with threads differs between submissions
        stepcost.ensure_costs(out_dir, load_records(out_dir), threads=trial_threads(threads, workers),
                              in_process=workers == 0, progress=progress)
    files = write_report(out_dir)
    _, st = load(out_dir)
    text = leaderboard_table(st) + f"\n\ntrainlab: bench results in {out_dir} (" + ", ".join(
        p.name for p in files) + ")"
    return BenchResult(out_dir, files, text)


def _validate(trials: list[Trial], gated: Sequence[BenchWorkload]) -> None:
    """Resolve every trial's config here, so a mistake stops the bench before any trial is spent. A Python-file
    submission's trials are resolved in the fresh process that checks the file: it is never imported here."""
    from trainlab.train.config import from_cli

    by_file: dict[str, list[tuple[str, ...]]] = {}
    for file, words in dict.fromkeys((t.submission_file, t.overrides) for t in trials):
        if file:
            by_file.setdefault(file, []).append(words)
        else:
            from_cli(None, list(words))
    for file, configs in by_file.items():
        submission.check_file(file, configs)
    for workload in gated:
        workload.variant(HELDOUT).resolved_target()


def _info(label: str, workloads: Sequence[BenchWorkload], subs: Sequence[submission.Submission],
          baseline: str | None, *, targets_path: Path, **settings: object) -> dict:
    from trainlab import __version__

    targets = {}
    for w in workloads:
        for variant in ("base", HELDOUT):
            v = w.variant(variant)
            try:
                targets[v.name] = {"metric": v.metric, "higher_is_better": v.higher_is_better,
                                   "target": v.resolved_target(), "time_budget": v.resolved_time_budget(),
                                   "step_budget": v.steps}
            except ConfigError:
                continue
    source = targets_file_data(targets_path)
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return {
        "suite": label, "workloads": [w.name for w in workloads],
        "submissions": [{"name": s.name, "spec": s.spec, "describe": s.describe()} for s in subs],
        "baseline": baseline, **settings, "targets": targets,
        "targets_source": {"file": TARGETS_FILE.name if targets_path == TARGETS_FILE else str(targets_path),
                           "commit": source.get("commit"), "date": source.get("date"),
                           "procedure": source.get("procedure")},
        "command": " ".join(shlex.quote(a) for a in argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {cores()} cores, {platform.platform()}", "trainlab": __version__,
    }
