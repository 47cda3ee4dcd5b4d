"""Claim 2: StableMax generalises without weight decay where float32 softmax cross-entropy hits Softmax Collapse.

    python experiments/c2_stablemax/run.py            # 2 arms x 3 seeds, then results.md
    python experiments/c2_stablemax/run.py --table    # only rewrite results.md
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import Arm, Column, main, standard_columns

ARMS = [
    Arm("stablemax", "stablemax.yaml", label="StableMax CE (float64), wd 0"),
    Arm("softmax", "softmax.yaml", label="softmax CE (float32), wd 0"),
    # Round 2 (issue 17): the paper's full budget, 80000 full-batch steps (their run_main_experiments.sh, figure 1:
    # --num_epochs 80000), one seed, measured at ~59 ms per step on one thread before launch (~80 min). Evaluation
    # every 500 steps and probes every 5000 keep the cost in the steps; checkpoints every 5000 for resume.
    Arm("stablemax_80k", "stablemax.yaml", ["steps=80000", "eval_every=500", "probes.every=5000",
                                            "checkpoint_every=5000", "threads=1"],
        label="R2: StableMax CE (float64), wd 0, 80000 steps"),
]
COLUMNS = standard_columns() + [
    Column("first step SC > 0", lambda r: r.first_step("softmax_collapse/fraction", lambda v: v > 0), ".0f"),
    Column("max SC fraction", lambda r: r.max("softmax_collapse/fraction")),
    Column("final SC fraction", lambda r: r.final("softmax_collapse/fraction")),
    Column("final zero-loss fraction", lambda r: r.final("softmax_collapse/zero_loss")),
    Column("final train loss", lambda r: r.final("train_loss")),
    Column("final cos(grad, w)", lambda r: r.final("grad_alignment/global"), ".3f"),
]
NOTES = """
Setting (Prieto et al. 2025, Fig. 1c, StableMax run of their run_main_experiments.sh): a+b mod 113, train
fraction 0.4, one-hot input, MLP 200-200 ReLU without biases, full batch, float32 parameters, AdamW lr 1e-2,
betas (0.9, 0.999), eps 1e-25, weight decay 0. The arms differ only in the loss: StableMax cross-entropy
(computed in float64, `loss.function=stablemax`) vs trainlab's default softmax cross-entropy (float32).
Budget 2000 full-batch steps, stopping at the first evaluation with val acc >= 0.99 (the paper trains the
StableMax run for 80000 epochs). Seeds vary the initialisation and the split. Probes every 100 steps on 256
training examples. The softmax-collapse probe measures the model's float32 logits: for the StableMax arm it says
whether a *softmax* of those logits would have collapsed (StableMax itself does not use the exponential).
Seeds run: StableMax 0, 1, 2; softmax seed 0 only (compute budget: ~5 min per run on the shared 2-core box).
The same float32 softmax baseline with beta2 0.99 is claim 1's AdamW arm (3 seeds, 600 steps).
Timing caveat: StableMax seed 1 ran its first 712 steps alongside another trainlab process of this study (a
mistake in chaining the drivers), was interrupted there and resumed (bit-identical continuation): its train
time is inflated and its "process wall s" covers only the resumed part.

Round 2 (issue 17): the paper's budget, 80000 full-batch steps, seed 0, one thread, 58 ms per step (77.6 min of
training on this session's CPU, AMD Zen 4, beside other jobs). StableMax memorised by step 500 and then, unlike
float32 softmax, began to generalise without weight decay: validation accuracy 0.0007 at step 4000, 0.015 at
28000, > 0.1 from 39000, > 0.5 from 53500, **0.753 at step 64000** (the maximum), with validation loss falling
from 10.0 (step 24000) to 2.45. Throughout, the weight norm grew about 2.3x every 10000 steps (13 -> 9355 by step
60000) with cos(grad, w) at -0.78 to -0.80, and the float32-softmax collapse fraction of its logits was 1 from
step 5000 (StableMax itself does not saturate). At step 64500 the run hit a loss spike (the slingshot detector
fired at 65000): train loss 1.5e-13 -> 1.36, weight norm 9.4k -> 191k, validation accuracy 0.75 -> 0.33; it
re-fitted the training set (train acc 0.998 at 80000) but validation stayed at 0.48-0.55 to the end (0.476 at
step 80000). Verdict for round 2: the direction is reproduced (generalisation without regularisation, where
float32 softmax stays below chance), the paper's end point (100% validation accuracy by 80000 epochs) is not:
1 seed, budget stated, and the spike is what stopped it (a plausible cause, not tested here: Adam's second
moment shrinking with gradients near a loss of 1e-13 at eps 1e-25, the slingshot mechanism of Thilak et al.).
"""

if __name__ == "__main__":
    main(HERE, "Claim 2: StableMax vs float32 softmax cross-entropy without weight decay, a+b mod 113", ARMS,
         [0, 1, 2], COLUMNS, notes=NOTES)
