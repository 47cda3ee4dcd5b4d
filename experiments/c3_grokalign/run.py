"""Claim 3: GrokAlign (Jacobian regularisation) reaches the generalisation threshold in fewer steps (Walker et al.).

    python experiments/c3_grokalign/run.py            # 2 arms x 3 seeds, then results.md
    python experiments/c3_grokalign/run.py --table    # only rewrite results.md
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import Arm, Column, Run, fmt, has_summary, main, median_range, run_dir, table

SEEDS = [0, 1, 2]
ARMS = [
    Arm("grokalign", "grokalign.yaml", ["loss.grokalign=1e-3"], label="GrokAlign λ = 1e-3"),
    Arm("baseline", "grokalign.yaml", ["loss.grokalign=0"], label="baseline (λ = 0)"),
]
COLUMNS = [
    Column("memorized step", lambda r: r.event("memorized"), ".0f"),
    Column("generalized step", lambda r: r.event("generalized"), ".0f"),
    Column("final val acc", lambda r: r.final("val_acc"), ".4f"),
    Column("train s per step", lambda r: r.summary["train_time"] / r.steps, ".3f"),
    Column("train time s", lambda r: r.summary["train_time"], ".1f"),
    Column("process wall s", lambda r: r.driver.get("process_wall_s"), ".1f"),
    Column("‖J‖_F at step 100", lambda r: r.at_step("jacobian/fro_norm", 100), ".3g"),
    Column("‖J‖_F last probe", lambda r: r.final("jacobian/fro_norm"), ".3g"),
    Column("centroid align. last probe", lambda r: r.final("jacobian/centroid_alignment"), ".3f"),
    Column("weight norm last probe", lambda r: r.final("weights/total"), ".4g"),
]
NOTES = """
Setting: a+b mod 97, train fraction 0.4 (3763 pairs), one-hot pair input, MLP 2×128 ReLU, full batch, softmax
cross-entropy, AdamW lr 3e-3, betas (0.9, 0.98), weight decay 1 (trainlab's default grokking recipe); budget 3000
steps, stopping at the first evaluation (every 10 steps) with validation accuracy ≥ 0.99 ("generalized").
GrokAlign arm: `loss.grokalign=1e-3` (the paper's λ for cross-entropy), one random projection per example,
Jacobian with respect to the one-hot input; the baseline arm is the same run with `loss.grokalign=0`. Seeds vary
the initialisation (`seed`) and the split (`workload.seed`). Probes every 100 steps on 256 training examples:
`jacobian` (GrokAlign's ‖J‖_F estimate and centroid alignment cos(c(x), x)) and `weights`.
Paper (Walker et al.): MNIST subset with MSE, 10 seeds, 1.69× fewer steps to grok than the baseline. This
reproduction is the cross-entropy, modular-arithmetic variant (no MNIST files here and no MSE classification loss
in trainlab); the λ is the paper's cross-entropy value, not tuned.

What we saw: GrokAlign reached validation accuracy 0.99 at step 760 [740, 780] against 2090 [1990, 2110]
without it, **2.78× [2.55, 2.82] fewer steps**; both arms memorised at step 140–150, so GrokAlign shortened the
grokking delay from ~1950 to ~620 steps. GrokAlign kept the Jacobian norm flat (‖J‖_F ≈ 257 at step 100, ≈ 236 at
the end) while the baseline's grew to ≈ 977; its final weight norm was smaller (57 vs 71) and its centroid
alignment closer to 0 (−0.20 vs −0.42). Cost: a GrokAlign step (double backward) took 0.124 s against 0.055 s
(2.3×, load-dependent), so in training time the gain is only ≈ 1.2× (96 s vs 116 s median).
"""


def ratio_section() -> str:
    """Steps-to-threshold ratio baseline / GrokAlign per seed (the paper's "× fewer steps")."""
    rows, ratios = [], []
    for s in SEEDS:
        paths = [run_dir(HERE, a, s) for a in ARMS]
        if not all(has_summary(p) for p in paths):
            continue
        ga, base = (Run(p) for p in paths)
        g, b = ga.event("generalized"), base.event("generalized")
        ratio = b / g if (g and b) else None
        note = ""
        if g and not b:
            note = f"baseline not within {base.summary['steps_planned']} steps: ratio > {base.summary['steps_planned'] / g:.2f}"
        elif b and not g:
            note = f"GrokAlign not within {ga.summary['steps_planned']} steps"
        if ratio is not None:
            ratios.append(ratio)
        rows.append([str(s), fmt(g, ".0f"), fmt(b, ".0f"), fmt(ratio, ".2f"), note])
    if not rows:
        return ""
    out = ["## Steps to the threshold, baseline / GrokAlign (the paper's \"× fewer steps\")", "",
           table(["seed", "GrokAlign step", "baseline step", "ratio", "note"], rows), "",
           f"Ratio over seeds: **{median_range(ratios, '.2f')}** (median [min, max], {len(ratios)} seed(s) where both "
           "arms reached the threshold).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main(HERE, "Claim 3: GrokAlign vs the same run without it on a+b mod 97", ARMS, SEEDS, COLUMNS, notes=NOTES)
    text = (HERE / "results.md").read_text()
    head, sep, rest = text.partition("## Over seeds")
    (HERE / "results.md").write_text(head + ratio_section() + "\n" + sep + rest)
