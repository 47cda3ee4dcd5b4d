"""From trial records to per-repetition times to target: study best, held-out gate, then the standings.

For a submission ``s``, workload ``w`` and repetition (study) ``r``: the time is the fastest time to target
among the study's base trials (:func:`trainlab.bench.tuning.study_best`), or ``inf`` if none reached it; with
the held-out gate on, it is also ``inf`` when the held-out trial of that repetition missed its target (or did
not run). The standings (:class:`Standings`) put the scoring functions of :mod:`trainlab.bench.scoring` on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from trainlab.bench import scoring
from trainlab.bench.timing import clock_value
from trainlab.bench.tuning import study_best


@dataclass
class Cell:
    """One submission on one workload: per-repetition times (inf = miss) and what produced them."""

    reps: list[float] = field(default_factory=list)
    gated: int = 0  # repetitions that reached the base target but missed the held-out one
    steps: list[int | None] = field(default_factory=list)  # step at the target per repetition (None: miss)
    best_trials: list[dict[str, Any]] = field(default_factory=list)  # the chosen trial's hyperparameters per rep
    trials: int = 0

    @property
    def time(self) -> float:
        return scoring.median(self.reps)

    @property
    def misses(self) -> int:
        return sum(1 for t in self.reps if not math.isfinite(t))


def cells(records: Iterable[dict[str, Any]], *, heldout: bool, clock: str = "wall") -> dict[str, dict[str, Cell]]:
    """``cells[submission][workload]`` from bench trial records, times on ``clock`` (:func:`clock_value`)."""

    def _time(row: dict[str, Any]) -> float:
        return clock_value(row["score"], clock)

    base: dict[tuple[str, str, int], list[dict]] = {}
    gate: dict[tuple[str, str, int], dict] = {}
    for row in records:
        if row.get("kind") != "bench":
            continue
        key = (row["submission"], row["workload"], row["study"])
        if row["variant"] == "base":
            base.setdefault(key, []).append(row)
        else:
            gate[key] = row
    out: dict[str, dict[str, Cell]] = {}
    for (sub, workload, study) in sorted(base, key=lambda k: (k[0], k[1], k[2])):
        rows = sorted(base[(sub, workload, study)], key=lambda r: r["trial"])
        best, index = study_best([_time(r) for r in rows])
        cell = out.setdefault(sub, {}).setdefault(workload, Cell())
        cell.trials += len(rows)
        if index is not None and heldout:
            check = gate.get((sub, workload, study))
            if check is None or not math.isfinite(_time(check)):
                best = math.inf
                cell.gated += 1
        cell.reps.append(best)
        cell.steps.append(rows[index]["score"]["step"] if index is not None and math.isfinite(best) else None)
        cell.best_trials.append({} if index is None else dict(rows[index].get("hyperparameters") or {}))
    return out


@dataclass
class Row:
    """A submission's line of the leaderboard."""

    name: str
    score: float
    solved: int
    speedup: float
    speedup_used: int
    ci: tuple[float, float]
    wins: int
    losses: int
    p_sign: float
    p_perm: float
    perm_pairs: int
    verdict: str
    speedup_algoperf: float = math.nan  # every workload, a miss counted as its time budget (AlgoPerf)
    detectable: float = math.nan  # the smallest speedup this run could have detected (power 0.8)


def time_budgets(records: Iterable[dict[str, Any]], clock: str = "wall") -> dict[str, float]:
    """Each workload's budget on ``clock`` for its base trials, the cost AlgoPerf charges a miss: the time budget
    (wall seconds), the step budget (steps), or the step budget at the reference's step cost (``cost_budget``,
    put in the records by :func:`trainlab.bench.stepcost.with_cost_time`); none on the CPU clock (the budgets are
    not CPU seconds)."""
    out: dict[str, float] = {}
    key = {"wall": "time_budget", "steps": "step_budget", "cost": "cost_budget"}.get(clock)
    if key is None:
        return out
    for row in records:
        budget = row.get(key)
        if row.get("kind") == "bench" and row.get("variant") == "base" and isinstance(budget, (int, float)):
            out[row["workload"]] = max(out.get(row["workload"], 0.0), float(budget))
    return out


@dataclass
class Standings:
    workloads: list[str]
    submissions: list[str]
    baseline: str | None
    cells: dict[str, dict[str, Cell]]
    rows: list[Row]  # best benchmark score first

    def times(self) -> dict[str, dict[str, float]]:
        return {s: {w: self.cell(s, w).time for w in self.workloads} for s in self.submissions}

    def cell(self, sub: str, workload: str) -> Cell:
        return self.cells.get(sub, {}).get(workload) or Cell()


def standings(records: Iterable[dict[str, Any]], workloads: Sequence[str], submissions: Sequence[str],
              baseline: str | None, *, heldout: bool, alpha: float = scoring.ALPHA, clock: str = "wall") -> Standings:
    records = list(records)
    table = cells(records, heldout=heldout, clock=clock)
    budgets = time_budgets(records, clock)
    result = Standings(list(workloads), list(submissions), baseline, table, [])
    times = result.times()
    scores = scoring.benchmark_score(times)
    tie = scoring.TIE_TOLERANCE.get(clock, 0.0)
    rows = []
    for sub in submissions:
        solved = sum(1 for w in workloads if math.isfinite(times[sub][w]))
        speedup, used, ci = math.nan, 0, (math.nan, math.nan)
        wins = losses = perm_pairs = 0
        p_sign = p_perm = math.nan
        speedup_algoperf = detectable = math.nan
        verdict = "baseline" if sub == baseline else ""
        if baseline is not None and sub != baseline:
            base_reps = {w: result.cell(baseline, w).reps for w in workloads}
            sub_reps = {w: result.cell(sub, w).reps for w in workloads}
            speedup, used = scoring.geomean_speedup(times[baseline], times[sub])
            ci = scoring.bootstrap_speedup_ci(base_reps, sub_reps)
            wins, losses, p_sign = scoring.sign_test(base_reps, sub_reps, tie=tie)
            p_perm, perm_pairs = scoring.permutation_test(base_reps, sub_reps)
            speedup_algoperf = scoring.algoperf_speedup(times[baseline], times[sub], budgets)
            detectable = max(scoring.detectable_speedup(base_reps, sub_reps, alpha=alpha), 1.0 + tie)
            _, _, p_slower = scoring.sign_test(sub_reps, base_reps, tie=tie)
            if p_sign < alpha and wins > losses:
                verdict = "faster"
            elif p_slower < alpha and losses > wins:
                verdict = "slower"
            else:
                verdict = "not distinguishable"
        rows.append(Row(sub, scores[sub], solved, speedup, used, ci, wins, losses, p_sign, p_perm, perm_pairs,
                        verdict, speedup_algoperf, detectable))
    rows.sort(key=lambda r: (-r.score, r.name != baseline, r.name))
    result.rows = rows
    return result
