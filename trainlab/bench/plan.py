"""Which trials a bench runs: submissions x workloads x the ruleset's trials, then the held-out gate.

Phase 1 runs every submission's trials on every workload (see :func:`trainlab.bench.tuning.plan_trials`;
a search space that is a list of points gives trial ``i`` of every study point ``i``, and runs at most
``trials`` of its points per study: a longer list runs its first ``trials``, and :func:`base_trials` says so).
Phase 2 runs, for every submission, workload and repetition ``r``, the workload's held-out variant once,
with the hyperparameters of repetition ``r``'s best base trial and seed ``r``; a repetition whose held-out
trial misses its target counts as a miss on the base workload too (AlgoPerf v0.5's held-out gate). A
repetition that missed on the base workload runs no held-out trial. The held-out trial's hyperparameters are
those its base record holds (for a list of points: the chosen point's values), whichever form the search
space has.

Every trial trains with ``trace=false`` (the per-step trace computes a gradient norm inside the timed step)
and ``stop_at_target=true`` (with ``target_metric``/``target`` when the bench's metric is a loss rather than the
workload's own metric): the run ends at the first evaluation that meets the target.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Sequence

from trainlab.bench.runner import Trial, trial_id
from trainlab.bench.submission import Submission, fmt
from trainlab.bench.suite import HELDOUT, BenchWorkload
from trainlab.bench.timing import clock_value
from trainlab.bench.tuning import budget_factor, plan_trials, study_best

TARGET_SEED_OFFSET = 1000  # target-setting runs use seeds 1000, 1001, ...: never the seeds a bench scores


def trainer_metric(workload: BenchWorkload) -> str:
    """The ``val_<metric>`` column the trainer's own threshold and stop_at_target look at."""
    from trainlab import workloads

    name = next(o.split("=", 1)[1] for o in workload.overrides if o.startswith("workload="))
    return f"val_{workloads.WORKLOADS.get(name).factory.metric}"


def bench_trial(workload: BenchWorkload, sub: Submission, *, ruleset: str, study: int, index: int, seed: int,
                hyperparameters: dict[str, Any], suite: str, variant: str = "base") -> Trial:
    factor = budget_factor(ruleset)
    steps = round(workload.steps * factor)
    target, budget = workload.resolved_target(), workload.resolved_time_budget() * factor
    overrides = [*workload.overrides, *sub.overrides(hyperparameters, steps),
                 f"steps={steps}", f"seed={seed}", "trace=false", f"time_budget={fmt(float(budget))}"]
    if trainer_metric(workload) == workload.metric:
        overrides += [f"threshold={fmt(float(target))}", "stop_at_target=true"]
    elif workload.metric in ("val_loss", "train_loss"):
        overrides += [f"target_metric={workload.metric}", f"target={fmt(float(target))}", "stop_at_target=true"]
    meta = {"kind": "bench", "suite": suite, "workload": workload.name.split("/")[0], "variant": variant,
            "submission": sub.name, "ruleset": ruleset, "study": study, "trial": index, "seed": seed,
            "hyperparameters": hyperparameters}
    base = workload.name.replace("/", ".")
    return Trial(
        id=trial_id(base, sub.name, f"s{study}-t{index}", content=[overrides, target, workload.metric]),
        overrides=tuple(overrides), metric=workload.metric, higher_is_better=workload.higher_is_better,
        target=target, time_budget=budget, step_budget=steps, submission_file=sub.file, meta=meta,
    )


def base_trials(workloads: Sequence[BenchWorkload], subs: Sequence[Submission], *, ruleset: str, seeds: int,
                studies: int, trials: int, suite: str) -> list[Trial]:
    """Phase 1: every submission's trials (:func:`~trainlab.bench.tuning.plan_trials`) on every workload,
    interleaved. A submission whose search space lists more points than ``trials`` runs the first ``trials``
    of them in each study; a line on stderr says so."""
    per_sub = []
    for sub in subs:
        if ruleset == "external" and isinstance(sub.search_space, tuple) and len(sub.search_space) > trials:
            print(f"trainlab: {sub.name}: its search space lists {len(sub.search_space)} points; --trials {trials} "
                  f"runs the first {trials} of them in each study", file=sys.stderr)
        per_sub.append([bench_trial(workload, sub, ruleset=ruleset, study=plan.study, index=plan.index,
                                    seed=plan.seed, hyperparameters=plan.hyperparameters, suite=suite)
                        for plan in plan_trials(sub.search_space, ruleset, trials=trials, studies=studies,
                                                seeds=seeds)
                        for workload in workloads])
    return interleave(per_sub)


def interleave(lists: Sequence[Sequence[Trial]]) -> list[Trial]:
    """Round-robin over the submissions' trial lists: on a machine whose load drifts, trials of the same
    workload and seed from different submissions then run close together in time, so the drift falls on
    all submissions alike instead of on whichever ran last."""
    out: list[Trial] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def heldout_trials(workloads: Sequence[BenchWorkload], subs: Sequence[Submission], records: Iterable[dict],
                   *, ruleset: str, suite: str, clock: str = "wall") -> list[Trial]:
    """Phase 2: one held-out trial per (submission, workload, repetition) whose best base trial (fastest on
    ``clock``) hit the target."""
    by_key: dict[tuple[str, str, int], list[dict]] = {}
    for row in records:
        if row.get("variant") == "base":
            by_key.setdefault((row["submission"], row["workload"], row["study"]), []).append(row)
    per_sub = []
    for sub in subs:
        out: list[Trial] = []
        per_sub.append(out)
        for workload in workloads:
            studies = sorted(s for (n, w, s) in by_key if n == sub.name and w == workload.name)
            for study in studies:
                rows = sorted(by_key[(sub.name, workload.name, study)], key=lambda r: r["trial"])
                times = [_time(r, clock) for r in rows]
                _, index = study_best(times)
                if index is None:
                    continue
                chosen = rows[index]
                out.append(bench_trial(workload.variant(HELDOUT), sub, ruleset=ruleset, study=study,
                                       index=chosen["trial"], seed=chosen["seed"],
                                       hyperparameters=chosen["hyperparameters"], suite=suite, variant=HELDOUT))
    return interleave(per_sub)


def _time(row: dict, clock: str = "wall") -> float:
    return clock_value(row["score"], clock)


def baseline_submission(workload: BenchWorkload) -> Submission:
    """The tuned baseline of ``workload``: NAdamW with its swept options, 2% linear warm-up, cosine to 0."""
    options = {"decoupled_weight_decay": True, **workload.baseline}
    return Submission("target-baseline", "nadam", options, "cosine", {"warmup_frac": 0.02})


def target_trials(workloads: Sequence[BenchWorkload], seeds: int) -> list[Trial]:
    """Target-setting runs: each workload and its held-out variant, the tuned baseline, seeds 1000...,
    ``target_setting_steps`` steps (3/4 of the step budget), no target and no time budget."""
    out = []
    for base in workloads:
        sub = baseline_submission(base)
        for variant in ("base", HELDOUT):
            workload = base.variant(variant)
            steps = base.target_setting_steps
            for i in range(seeds):
                seed = TARGET_SEED_OFFSET + i
                overrides = [*workload.overrides, *sub.overrides({}, steps), f"steps={steps}", f"seed={seed}",
                             "trace=false"]
                meta = {"kind": "target", "workload": base.name, "variant": variant, "seed": seed,
                        "steps": steps, "baseline": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in base.baseline.items()}}
                out.append(Trial(id=trial_id(workload.name.replace("/", "."), "target", f"seed{seed}",
                                             content=overrides),
                                 overrides=tuple(overrides), metric=workload.metric,
                                 higher_is_better=workload.higher_is_better, meta=meta))
    return out
