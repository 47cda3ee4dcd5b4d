"""Claim 8: the stability gap (De Lange et al. 2023): evaluated after every step, old tasks dip right after a task
switch and then (partly) recover, for naive fine-tuning, replay and EWC.

    python experiments/c8_stability_gap/run.py            # 9 arms x 3 seeds, then results.md
    python experiments/c8_stability_gap/run.py --table    # only rewrite results.md
"""

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (Arm, Column, Run, continual_columns, fmt, gap_pairs, has_summary, main, median_range,  # noqa: E402
                    run_dir, table)

SEEDS = [0, 1, 2]
SEED_KEYS = ("seed",)  # initialisation, batch order and the methods' draws; the data stay MNIST-1D's published ones
DEEP = 0.1  # a gap "deeper than 0.1" (trainlab's continual.gap_threshold default, the stability_gap event's)
SETTINGS = [  # (arm prefix, config, overrides, label)
    ("class", "split_mnist1d.yaml", ["workload.scenario=class"], "split, class-IL"),
    ("task", "split_mnist1d.yaml", ["workload.scenario=task"], "split, task-IL"),
    ("domain", "permuted_mnist1d.yaml", [], "permuted, domain-IL"),
]
METHODS = [("naive", []), ("replay", ["continual.memory=200"]), ("ewc", ["continual.ewc_lambda=100"])]
ARMS = [Arm(f"{prefix}-{method}", config, [*overrides, f"continual.method={method}", *extra],
            label=f"{label}: {method}")
        for prefix, config, overrides, label in SETTINGS for method, extra in METHODS]


def mean_depth(run: Run) -> float | None:
    pairs = gap_pairs(run)
    return statistics.fmean(p["depth"] for p in pairs) if pairs else None


def deep_fraction(run: Run) -> float | None:
    pairs = gap_pairs(run)
    return sum(p["depth"] > DEEP for p in pairs) / len(pairs) if pairs else None


def held_depth(run: Run) -> float | None:
    """Mean depth over the pairs whose old task was still at >= 0.5 accuracy at the switch (not forgotten already)."""
    pairs = [p for p in gap_pairs(run) if p["at_switch"] >= 0.5]
    return statistics.fmean(p["depth"] for p in pairs) if pairs else None


COLUMNS = [
    Column("mean gap depth (all pairs)", mean_depth, ".3f"),
    Column("pairs deeper than 0.1", deep_fraction, ".2f"),
    Column("mean depth, old task ≥ 0.5 at switch", held_depth, ".3f"),
    *continual_columns(),
]

NOTES = """
Setting. **Split MNIST-1D**: 5 tasks of 2 classes (0,1 | 2,3 | … | 8,9), class-incremental (one 10-way head) or
task-incremental (logits restricted to the task's two classes). **Permuted MNIST-1D**: 5 tasks, each all ten digits
with the 40 inputs in another fixed random order, one 10-way head (domain-incremental). MNIST-1D's published data
(generator seed 42; 4000 training, 1000 validation examples; about 200 validation examples per split task, 500 of
1000 per permuted task). MLP 2×256 ReLU, AdamW lr 1e-3, betas (0.9, 0.999), weight decay 0.01, batch 32 (the
workloads' recipe and trainlab's default optimizer); 300 steps per split task (~12 epochs), 500 per permuted task
(4 epochs). Methods at trainlab's defaults, not tuned: naive fine-tuning; replay, a 200-row reservoir buffer with 32
rows added to every batch (Chaudhry et al. 2019); online EWC, λ = 100, Fisher on 200 examples with sampled labels.
**Every task is evaluated after every step** (`eval_every=1`), as De Lange et al. do. Seeds 0–2 vary the
initialisation, the batch order and the methods' draws (`seed`); the data and the task order are the same.

Gap measures (trainlab's `summary.json["continual"]["stability_gaps"]`, one entry per switch to task k and old task
i < k): depth = accuracy at the switch − lowest accuracy while task k trains; recovered = back within 0.03 of the
accuracy at the switch before task k ended (trainlab's tolerance); the driver adds steps from the switch to the
lowest point, and the share of the drop won back by the end of task k, (end − min) / depth. "Mean gap depth (all
pairs)" averages every pair, including old tasks that were already at 0 when the switch came (naive class-IL
forgets each task completely at the next switch, so most of its later pairs have depth 0); the next column keeps only
pairs whose old task was still at ≥ 0.5 at the switch.

Paper (De Lange et al. 2023, abstract): with per-iteration evaluation, "experience replay, constraint-based replay,
knowledge-distillation, and parameter regularization methods are all prone to the stability gap" (substantial
forgetting upon starting a new task, "followed by a phase of performance recovery"), "in class-, task-, and
domain-incremental learning benchmarks"; the gap grows with the dissimilarity of the tasks.

What we saw (numbers from the tables below). **Class-IL.** Replay shows the gap: 25 of its 30 (switch, old task)
pairs fell by more than 0.1, the old task from 0.58 (mean) at the switch to 0.03 within 22 [13, 33] steps, then
back up to 0.27 by the end of the new task (a median 41% of the drop regained; 7/25 back within 0.03 of their value
at the switch, after a median 36 steps). min-ACC 0.015 against a final ACC of 0.358. Naive fine-tuning has no gap
but plain forgetting: the task just finished falls from 0.90 to 0.00 within 28 [12, 39] steps and never comes back
(0/12). EWC with λ = 100 behaves like naive here (forgetting 0.904 against 0.903; claim 9 finds that a 100× larger λ
does not help in class-IL either). **Task-IL.** No sharp gap: replay has no pair deeper than 0.1 (mean
depth 0.027, about the measurement noise), EWC 3 of 30 (depth ≈ 0.12, half regained). Naive has 13 of 30, but
these are slow forgetting, the minimum a median 151 steps after the switch with 20% regained, not a dip right after
it. **Domain-IL (permuted).** All three methods show the gap's shape: the old task bottoms out 9–11 steps after
the switch and then partly recovers. Naive: 17/30 pairs, depth 0.21, 49% regained, 7/17 fully; replay: 14/30, depth
0.17, 38% regained, 8/14 fully after a median 41 steps; EWC: 4/30, mostly the first switch (task 0 from 0.52–0.56
to 0.24–0.27 in 10–11 steps, back to 0.38–0.41); after that EWC learns each new task less well (ACC 0.333 against
0.404) and its old tasks dip less. min-ACC against ACC: naive 0.316 / 0.404, replay 0.350 / 0.412, EWC 0.298 / 0.333.

Verdict: **partly reproduced.** Replay has a stability gap in class-IL (deep, reached within ~20 steps, partly
recovered) and in domain-IL, and EWC has one at domain-IL's first switch. But in task-IL neither replay nor EWC
shows a gap deeper than 0.1, where the paper reports one, and in class-IL EWC (λ = 100) and naive fine-tuning
forget outright, with no recovery. The MNIST-1D tasks are small (~200 validation examples per split task), so
depths below ~0.05 are within noise.
"""


def pooled_section() -> str:
    """Gap statistics over the (switch, old task) pairs of every seed of an arm: how sharp the drops are, how many
    recover, and how much of the drop comes back by the end of the task."""
    rows = []
    for arm in ARMS:
        runs = [Run(run_dir(HERE, arm, s)) for s in SEEDS if has_summary(run_dir(HERE, arm, s))]
        if not runs:
            continue
        pairs = [p for r in runs for p in gap_pairs(r)]
        deep = [p for p in pairs if p["depth"] > DEEP]
        recovered = [p["recovery_steps"] for p in deep if p["recovery_steps"] is not None]
        regained = [p["regained"] for p in deep if p["regained"] is not None]
        rows.append([
            arm.title, str(len(runs)), str(len(pairs)), f"{len(deep)} ({len(deep) / len(pairs):.0%})" if pairs else "—",
            median_range([p["depth"] for p in deep], ".3f"),
            median_range([float(p["to_min"]) for p in deep], ".0f"),
            f"{len(recovered)}/{len(deep)}",
            median_range([float(s) for s in recovered], ".0f"),
            median_range(regained, ".2f"),
            fmt(statistics.fmean(p["at_switch"] for p in deep), ".3f") if deep else "—",
            fmt(statistics.fmean(p["min"] for p in deep), ".3f") if deep else "—",
            fmt(statistics.fmean(p["end"] for p in deep), ".3f") if deep else "—",
        ])
    if not rows:
        return ""
    header = ["arm", "seeds", "pairs", "deeper than 0.1", "depth of those", "steps switch → min",
              "recovered (within 0.03)", "recovery steps", "share of the drop regained by task end",
              "mean acc at switch", "mean min", "mean at task end"]
    return "\n".join([
        "## Stability gaps over all seeds' (switch, old task) pairs", "",
        "Pairs deeper than 0.1 only, pooled over the seeds (median [min, max] over those pairs; recovery steps over the "
        "pairs that recovered). Values are validation accuracies of the old task.", "",
        table(header, rows), ""])


if __name__ == "__main__":
    main(HERE, "Claim 8: the stability gap under continual evaluation (De Lange et al. 2023)", ARMS, SEEDS, COLUMNS,
         seed_keys=SEED_KEYS, notes=NOTES)
    text = (HERE / "results.md").read_text()
    head, sep, rest = text.partition("## Over seeds")
    (HERE / "results.md").write_text(head + pooled_section() + "\n" + sep + rest)
