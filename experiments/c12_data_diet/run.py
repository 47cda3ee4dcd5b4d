"""Claim 12: data diet (Paul, Ganguli & Dziugaite 2021, "Deep Learning on a Data Diet: Finding Important Examples
Early in Training"). EL2N scores averaged over ten initialisations, taken early in training, pick the examples to keep:
training on the hardest half keeps the accuracy of training on everything, a random half of the same size does worse,
and at high pruning dropping the very hardest too helps.

Stage 1: ten scoring runs (score.yaml, seeds 100-109; 800 steps = epoch 20, probes=data_diet). Stage 2 (train.yaml,
seeds 0-2, 8000 steps each): all data; EL2N hardest / easiest / random 50%; GraNd-at-init hardest 50%; EL2N hardest
30%, hardest 30% after skipping the hardest 10%, random 30%.

    OMP_NUM_THREADS=1 nice -n 5 python experiments/c12_data_diet/run.py          # 10 + 24 runs, then results.md
    python experiments/c12_data_diet/run.py --table                              # only rewrite results.md
"""

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from common import (REPO, Arm, Run, fmt, has_summary, median_range, paired_table, run_dir, shell_command, table,  # noqa: E402
                    train)
from trainlab.train.diet import choose, mean_scores, read_scores  # noqa: E402
from trainlab.workloads.mnist1d import Mnist1dOptions, load_arrays  # noqa: E402

SCORE_SEEDS = list(range(100, 110))  # ten initialisations (Paul et al. average over ~10); not the training seeds
SEEDS = [0, 1, 2]  # stage 2: initialisation and batch order (`seed`); random arms also draw their subset from it
SEED_KEYS = ("seed",)  # the data stay MNIST-1D's published ones (workload.seed 42)
SCORE_STEP = 800  # epoch 20 of 200 (4000 examples / batch 100 = 40 steps per epoch), as in score.yaml
N_TRAIN = 4000
SCORE = Arm("score", "score.yaml", label="scoring run (all data, 800 steps)")


def score_files(step: int) -> list[str]:
    """The scoring runs' CSVs at ``step``, relative to the repository root (trainlab runs there)."""
    return [str((run_dir(HERE, SCORE, s) / "data_diet" / f"step_{step}.csv").relative_to(REPO)) for s in SCORE_SEEDS]


def diet(keep: float, select: str, seed: int, score: str = "el2n", step: int = SCORE_STEP,
         skip: float = 0.0) -> list[str]:
    out = [f"data.keep={keep}", f"data.select={select}"]
    if skip:
        out.append(f"data.skip_hardest={skip}")
    if select == "random":
        out.append(f"data.seed={seed}")  # a different random subset per run, as the paper's run_random_subset.py
    if select != "random" or skip:
        out += [f"data.score={score}", "data.scores=" + ",".join(score_files(step))]
    return out


# name -> (label, overrides for a seed); the order is the training order within a seed
SPECS = {
    "full": ("all data (4000)", lambda s: []),
    "el2n_hard50": ("EL2N hardest 50% (2000)", lambda s: diet(0.5, "hardest", s)),
    "random50": ("random 50% (2000)", lambda s: diet(0.5, "random", s)),
    "el2n_hard30": ("EL2N hardest 30% (1200)", lambda s: diet(0.3, "hardest", s)),
    "el2n_skip10_hard30": ("EL2N skip hardest 10%, next 30% (1200)", lambda s: diet(0.3, "hardest", s, skip=0.1)),
    "random30": ("random 30% (1200)", lambda s: diet(0.3, "random", s)),
    "el2n_easy50": ("EL2N easiest 50% (2000)", lambda s: diet(0.5, "easiest", s)),
    "grand0_hard50": ("GraNd at init, hardest 50% (2000)", lambda s: diet(0.5, "hardest", s, "grand", 0)),
}
# (arm, baseline): the claim's comparisons, as per-seed differences arm - baseline (same run seed)
PAIRS = [("el2n_hard50", "full"), ("random50", "full"), ("el2n_hard50", "random50"), ("el2n_easy50", "random50"),
         ("grand0_hard50", "random50"), ("el2n_hard30", "random30"), ("el2n_skip10_hard30", "random30"),
         ("el2n_skip10_hard30", "el2n_hard30")]


def arm(name: str, seed: int) -> Arm:
    label, overrides = SPECS[name]
    return Arm(name, "train.yaml", overrides(seed), label=label)


def runs_of(name: str) -> list[tuple[int, Run]]:
    return [(s, Run(run_dir(HERE, arm(name, s), s))) for s in SEEDS if has_summary(run_dir(HERE, arm(name, s), s))]


def final_val(r: Run) -> float | None:
    return r.final("val_acc")


def best_val(r: Run) -> float | None:
    return r.summary.get("best_val_acc")


COLUMNS = [("final val acc", final_val, ".4f"), ("best val acc", best_val, ".4f"),
           ("step of best", lambda r: float(max(r.series("val_acc"), key=lambda sv: sv[1])[0]), ".0f"),
           ("final train acc (kept rows)", lambda r: r.final("train_acc"), ".4f"),
           ("train s", lambda r: r.summary["train_time"], ".1f"),
           ("process s", lambda r: r.driver.get("process_wall_s"), ".1f")]

NOTES = """
Claim (Paul, Ganguli & Dziugaite 2021; ../shared/reference/families.md section 4): EL2N = ‖softmax f(x) − onehot(y)‖₂,
averaged over ~10 initialisations and computed a few epochs into training, ranks the examples; training from scratch
on the highest-scoring (hardest) half of CIFAR-10 keeps, even slightly improves, the test accuracy of training on all
of it, while a random half does worse; at high pruning rates, skipping the very hardest examples as well helps.
Paper, beside ours: CIFAR-10, ResNet18, SGD lr 0.1, 200 epochs; EL2N at epoch 20 (Kirsch 2023's replication confirms
the EL2N-at-epoch-20 result and finds that GraNd at initialisation does *not* beat random pruning); pruned sets
trained for the same number of steps as the full set (the paper's code: `num_steps = 200*390` in every script).

Setting (decided before the stage-2 runs, after two pilots that only measured cost and the full-data curve):
MNIST-1D's published data (4000 train / 1000 validation; the validation split is MNIST-1D's test set), the
workload's recipe, cnn1d (10,826 parameters), AdamW lr 1e-3, wd 0.01, constant lr, batch 100 (train.yaml, not
tuned). **Budget: 8000 steps for every arm** (equal iterations, as in the paper's code) = 200 epochs of all 4000
examples, 400 of a 50% subset, ~667 of a 30% subset; every run fits its training rows (train acc 1.0). **Stage 1**:
10 scoring runs (seeds 100–109, disjoint from the training seeds 0–2; ten because the paper averages ~10
initialisations and a run costs ~10 s) on all data, stopped at **step 800 = epoch 20** (the paper's epoch 20 of
200; val acc there 0.796 [0.755, 0.830], i.e. "early": the full runs end at 0.95); `probes=data_diet` writes EL2N and
GraNd of all 4000 examples at steps 0 and 800; `data.scores` averages the ten files per example. **Stage 2**, 3
seeds each: all data; EL2N hardest 50%; **random 50% with data.seed = the run seed (a different subset per run,
as the paper's run_random_subset.py)**; EL2N easiest 50%; GraNd-at-initialisation hardest 50% (the step-0 files);
EL2N hardest 30%; EL2N hardest 30% after skipping the hardest 10% (`data.skip_hardest=0.1`); random 30%.
Val acc is measured every 200 steps on all 1000 validation examples ("best" is the best of those 41 evaluations,
an optimistic number; "final" is step 8000). One evaluation's binomial standard error is ≈ 0.008 at acc 0.92, so
differences below ~0.02 are within noise. Time: stage 1 100 s, stage 2 1100 s, driver 1200 s (20 min) on one
thread of this shared 2-core box (~43 s per 8000-step run: 32–55 s of training).

What we saw. **50%**: all data 0.950 [0.946, 0.951] final val acc; EL2N hardest 50% **0.923 [0.896, 0.930]**,
random 50% **0.916 [0.911, 0.929]**. Paired by seed, hardest − all = −0.023 [−0.055, −0.020] (0/3 seeds ≥ 0),
hardest − random = **+0.001 [−0.015, +0.007]** (2/3 seeds > 0 final, 1/3 best): halving the data costs ~2.5 points
either way, and the EL2N choice is no better than chance. The scores do carry information: the EASIEST half
trains to 0.712 [0.691, 0.716], 0.22 below random. **30%**: EL2N hardest 0.825 [0.786, 0.851], hardest after
skipping the top 10% 0.811 [0.806, 0.825], random **0.873 [0.869, 0.883]**: both EL2N subsets are worse than random
in 3/3 seeds (−0.048 and −0.063), and skipping the hardest 10% did not help (−0.040 to +0.020 per seed, 1/3 seeds > 0).
**GraNd at initialisation** hardest 50%: 0.782 [0.781, 0.783], 0.135 below random (0/3), as Kirsch 2023 found on
CIFAR-10; its ranking is anti-correlated with EL2N's (Spearman −0.56) and picks mostly classes 0, 3 and 6 (347–388 of ~400 each).
The EL2N scores are stable across initialisations (one run vs the mean of the other nine: Spearman 0.935
[0.917, 0.942]). A likely reason the hardest subsets do no better: **they are strongly class-imbalanced**. EL2N at
epoch 20 is strongly class-dependent here: the hardest 50% holds 29–34 examples of classes 0, 3 and 6 (of
~400 each) against 384–394 of classes 1 and 4; the hardest 30% holds 16–18 of classes 0, 3, 6. At 50% this is no
worse than random (presumably ~30 examples suffice for those classes), at 30% it is. A second, untested reading is
that 4000 MNIST-1D examples is a data-scarce regime, where keeping hard examples is not expected to pay (Sorscher et
al. 2022, "Beyond neural scaling laws"); we ran no larger data set or class-balanced selection to check either.

Verdict: **not reproduced.** EL2N scores from 10 initialisations at epoch 20 are stable and identify the
*unimportant* (easiest) examples, but training on the hardest 50% lost 0.023 [0.020, 0.055] val acc against all data
(paper: a slight gain) and tied a random 50% (+0.001; paper: EL2N beats random); at 30% both EL2N subsets lost to
random (medians −0.048 and −0.063, 3/3 seeds) and skipping the hardest 10% did not help. One workload, one model, 3 seeds, untuned recipe.
"""


# ------------------------------------------------------------------------------------------- score analysis


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def score_section() -> str:
    out = ["## Stage 1: scoring runs", ""]
    runs = [(s, Run(run_dir(HERE, SCORE, s))) for s in SCORE_SEEDS if has_summary(run_dir(HERE, SCORE, s))]
    if not runs:
        return "\n".join(out + ["not run", ""])
    rows = [[str(s), r.status, str(r.steps), fmt(r.final("val_acc"), ".4f"), fmt(r.final("train_acc"), ".4f"),
             fmt(r.final("data_diet/el2n_mean"), ".4f"), fmt(r.final("data_diet/grand_mean"), ".3g"),
             fmt(r.driver.get("process_wall_s"), ".1f")] for s, r in runs]
    out += [table(["seed", "status", "steps", "val acc @800", "train acc @800", "mean EL2N @800", "mean GraNd @800",
                   "process s"], rows), ""]
    out += [f"Over the {len(runs)} scoring runs: val acc at step {SCORE_STEP} "
            f"{median_range([r.final('val_acc') for _, r in runs], '.4f')}.", ""]
    if len(runs) < len(SCORE_SEEDS):
        return "\n".join(out)
    el2n = [read_scores(str(REPO / p), "el2n", N_TRAIN) for p in score_files(SCORE_STEP)]
    mean = mean_scores([str(REPO / p) for p in score_files(SCORE_STEP)], "el2n", N_TRAIN)
    grand0 = mean_scores([str(REPO / p) for p in score_files(0)], "grand", N_TRAIN)
    loo = []
    for i, e in enumerate(el2n):
        others = sum(x for j, x in enumerate(el2n) if j != i) / (len(el2n) - 1)
        loo.append(spearman(e, others))
    y = torch.from_numpy(load_arrays(Mnist1dOptions())["y"])
    if len(y) != N_TRAIN:
        raise SystemExit(f"expected {N_TRAIN} training labels, got {len(y)}")
    sets = {"EL2N hardest 50%": choose(N_TRAIN, 0.5, "hardest", scores=mean),
            "EL2N easiest 50%": choose(N_TRAIN, 0.5, "easiest", scores=mean),
            "EL2N hardest 30%": choose(N_TRAIN, 0.3, "hardest", scores=mean),
            "EL2N skipped hardest 10%": choose(N_TRAIN, 0.1, "hardest", scores=mean),
            "EL2N skip 10%, next 30%": choose(N_TRAIN, 0.3, "hardest", 0.1, scores=mean),
            "GraNd@init hardest 50%": choose(N_TRAIN, 0.5, "hardest", scores=grand0),
            "random 50% (data.seed 0)": choose(N_TRAIN, 0.5, "random", seed=0)}
    hard50 = set(sets["EL2N hardest 50%"].tolist())
    crows = []
    for name, idx in sets.items():
        counts = torch.bincount(y[idx], minlength=10).tolist()
        overlap = len(hard50 & set(idx.tolist())) / len(idx)
        crows.append([name, str(len(idx)), " ".join(str(c) for c in counts), f"{overlap:.3f}",
                      f"{float(mean[idx].mean()):.3f}"])
    all_counts = " ".join(str(c) for c in torch.bincount(y, minlength=10).tolist())
    crows.append(["all training examples", str(N_TRAIN), all_counts, f"{len(hard50) / N_TRAIN:.3f}",
                  f"{float(mean.mean()):.3f}"])
    q = torch.quantile(mean.float(), torch.tensor([0.1, 0.5, 0.7, 0.9])).tolist()
    out += [f"Consistency of the scores: Spearman correlation of one run's EL2N with the mean of the other nine "
            f"{median_range(loo, '.3f')}; of the ten-run mean EL2N (step {SCORE_STEP}) with the ten-run mean GraNd "
            f"at initialisation {spearman(mean, grand0):.3f}. Mean EL2N quantiles 10/50/70/90%: "
            + ", ".join(f"{v:.3f}" for v in q) + " (EL2N lies in [0, √2]).", ""]
    out += ["Subsets chosen by the averaged scores (counts per class 0 … 9; overlap = fraction of the subset that is "
            "also in the EL2N hardest 50%):", ""]
    out += [table(["subset", "examples", "per class 0 … 9", "overlap with EL2N hardest 50%", "its mean EL2N"], crows),
            ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- tables


def results_markdown() -> str:
    out = ["# Claim 12: data diet — EL2N-pruned training sets on MNIST-1D (Paul, Ganguli & Dziugaite 2021)", "",
           NOTES.strip(), ""]
    rows, per_run, commands = [], [], []
    for name in SPECS:
        pairs = runs_of(name)
        label = SPECS[name][0]
        if not pairs:
            rows.append([label, "0", *("not run" for _ in COLUMNS)])
            continue
        runs = [r for _, r in pairs]
        rows.append([label, str(len(runs)), *(median_range([f(r) for r in runs], spec) for _, f, spec in COLUMNS)])
        for s, r in pairs:
            kept = (r.summary.get("data") or {}).get("kept", N_TRAIN)
            per_run.append([label, str(s), r.status, str(r.steps), str(kept),
                            *(fmt(f(r), spec) for _, f, spec in COLUMNS)])
        commands.append(f"- {label}: `{shell_command(HERE, arm(name, SEEDS[0]), SEEDS[0], SEED_KEYS)}`")
    out += ["## Stage 2: over seeds (median [min, max]; val acc on all 1000 validation examples)", ""]
    out += [table(["arm", "seeds", *(h for h, _, _ in COLUMNS)], rows), ""]
    out += ["## Paired comparisons (same run seed; arm − baseline, in val acc)", ""]
    out += [paired_table(PAIRS, runs_of, SEEDS, {name: spec[0] for name, spec in SPECS.items()},
                         (final_val, best_val)), ""]
    out += [score_section()]
    out += ["## Stage 2: per run", ""]
    out += [table(["arm", "seed", "status", "steps", "examples", *(h for h, _, _ in COLUMNS)], per_run), ""]
    out += ["## Commands (stage 2: seed 0; the driver runs seeds 0–2; random arms use data.seed = the run seed)", "",
            f"- scoring run, seed {SCORE_SEEDS[0]} (the driver runs seeds {SCORE_SEEDS[0]}–{SCORE_SEEDS[-1]}): "
            f"`{shell_command(HERE, SCORE, SCORE_SEEDS[0], SEED_KEYS)}`",
            *commands, "",
            f"All of it: `OMP_NUM_THREADS=1 nice -n 5 python {HERE.relative_to(REPO)}/run.py` (skips finished runs, "
            "resumes interrupted ones; `--table` only rewrites this file).", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Claim 12 (data diet): train what is missing, then write results.md")
    parser.add_argument("--table", action="store_true", help="only (re)write results.md from the run directories")
    parser.add_argument("--arms", nargs="*", help="only these stage-2 arms (names: " + ", ".join(SPECS) + ")")
    parser.add_argument("--seeds", nargs="*", type=int, help="only these stage-2 seeds")
    args = parser.parse_args()
    if not args.table:
        t0 = time.perf_counter()
        print("stage 1: scoring runs", flush=True)
        for s in SCORE_SEEDS:
            train(HERE, SCORE, s, SEED_KEYS)
        missing = [p for p in score_files(SCORE_STEP) + score_files(0) if not (REPO / p).is_file()]
        if missing:
            raise SystemExit(f"scoring runs left no scores file {missing[0]} (and {len(missing) - 1} more)")
        print(f"stage 1 done after {time.perf_counter() - t0:.1f} s; stage 2", flush=True)
        for s in args.seeds or SEEDS:  # seed-major: a partial pass already compares the arms
            for name in SPECS:
                if not args.arms or name in args.arms:
                    train(HERE, arm(name, s), s, SEED_KEYS)
        print(f"driver wall time {time.perf_counter() - t0:.1f} s", flush=True)
    text = results_markdown()
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
