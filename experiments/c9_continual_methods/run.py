"""Claim 9: on split MNIST-1D naive fine-tuning forgets more than EWC, experience replay and OGD, over seeds (with
power-law rehearsal, refresh learning and iCaRL's nearest-mean classifier beside them), class- and task-incremental.

    python experiments/c9_continual_methods/run.py            # 18 arms x 3 seeds, then results.md
    python experiments/c9_continual_methods/run.py --table    # only rewrite results.md
"""

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (Arm, Run, continual, continual_columns, has_summary, main, median_range, run_dir,  # noqa: E402
                    table)

SEEDS = [0, 1, 2]
SEED_KEYS = ("seed",)  # initialisation, batch order and the methods' draws; the data stay MNIST-1D's published ones
SGD_LR = 0.1  # OGD's base and its baseline: plain SGD (Farajtabar et al.), no momentum; see NOTES for the choice
# method name -> (label, overrides); every value is trainlab's default, written out so that the commands say it
METHODS = {
    "naive": ("naive (AdamW)", ["continual.method=naive"]),
    "replay": ("replay (AdamW)", ["continual.method=replay", "continual.memory=200", "continual.replay_batch=32"]),
    "power_law": ("power_law (AdamW)", ["continual.method=power_law", "continual.memory=200",
                                        "continual.replay_batch=32", "continual.power_law_exponent=1"]),
    "ewc": ("ewc (AdamW)", ["continual.method=ewc", "continual.ewc_lambda=100", "continual.ewc_gamma=1",
                            "continual.ewc_samples=200"]),
    "refresh": ("refresh (AdamW)", ["continual.method=refresh", "continual.refresh_delta=1e-5",
                                    "continual.refresh_fisher=0.001", "continual.refresh_noise=0.001",
                                    "continual.refresh_decay=1e-5"]),
    "nmc": ("nmc (AdamW)", ["continual.method=nmc", "continual.memory=200", "continual.replay_batch=32"]),
    "sgd": ("naive (SGD)", ["continual.method=naive", "optimizer=sgd", f"optimizer.lr={SGD_LR}"]),
    "ogd": ("OGD (SGD)", ["continual.method=naive", "optimizer=ogd", "optimizer.base=sgd", f"optimizer.lr={SGD_LR}",
                          "optimizer.memory=200"]),
    # sensitivity, decided before any run and not used for the ordering: EWC's penalty with trainlab's default
    # lambda is weak (its Fisher, of a confident model, is small); one value 100x larger shows how much that matters
    "ewc1e4": ("ewc λ=1e4 (AdamW; sensitivity)", ["continual.method=ewc", "continual.ewc_lambda=1e4",
                                                  "continual.ewc_gamma=1", "continual.ewc_samples=200"]),
}
# OGD projects every parameter on the single head of the class scenario (the rule that keeps old classes' logits)
# and leaves the head unprojected in the task scenario, as Farajtabar et al. do with their multi-head networks
OGD_PROJECT = {"class": "all", "task": "body"}
SCENARIOS = {"class": "class-IL", "task": "task-IL"}


def arm(scenario: str, method: str) -> Arm:
    label, overrides = METHODS[method]
    extra = [f"optimizer.project={OGD_PROJECT[scenario]}"] if method == "ogd" else []
    return Arm(f"{scenario}-{method}", "split_mnist1d.yaml", [f"workload.scenario={scenario}", *overrides, *extra],
               label=f"{SCENARIOS[scenario]}: {label}")


ARMS = [arm(s, m) for s in SCENARIOS for m in METHODS]
COLUMNS = continual_columns()
# The claim: naive forgets more than each of these (OGD against its own SGD baseline and against naive AdamW)
CLAIM = [("ewc", "naive"), ("replay", "naive"), ("ogd", "sgd"), ("ogd", "naive")]

NOTES = """
Setting: split MNIST-1D, 5 tasks of 2 classes (0,1 | 2,3 | … | 8,9), MNIST-1D's published data (generator seed 42;
4000 training, 1000 validation examples, ~800 / ~200 per task), 300 steps of batch 32 per task (~12 epochs),
class-incremental (one 10-way head) and task-incremental (logits restricted to the task's two classes, in training and
evaluation). MLP 2×256 ReLU. Optimizer for every method but OGD: AdamW lr 1e-3, betas (0.9, 0.999), weight decay
0.01 (the workload's recipe / trainlab's default). Seeds 0–2 vary the initialisation, the batch order and the
methods' draws (`seed`), not the data or the class order. Evaluation every 50 steps plus 8 log-spaced steps per decade
after each switch, on every task's ~200 validation examples. ACC, BWT, forgetting (Chaudhry et al. 2018: mean over
old tasks of best-ever minus final accuracy), min-ACC and WC-ACC are trainlab's (`summary.json["continual"]`).

Methods, all at trainlab's defaults (not tuned; they follow families.md where it gives values: OGD's 200 gradients,
refresh's constants):
naive fine-tuning; **replay**, a reservoir buffer of 200 rows, 32 of them added to every batch (Chaudhry et al. 2019);
**power_law**, the same buffer and volume, old tasks drawn with weight (1 + steps since the task ended)^−1 (Gandhi et
al. 2024, trainlab's reading); **ewc**, online EWC, λ = 100, γ = 1, diagonal Fisher on 200 examples with labels
sampled from the model (Kirkpatrick et al. 2017); **refresh**, unlearn-relearn with δ = 1e-5, Fisher weight 0.001,
noise 0.001, Fisher decay 1e-5 (the reference code's values), on plain fine-tuning rather than on DER++ as in the
paper; **nmc**, replay's training with iCaRL's nearest-mean-of-exemplars classifier (Rebuffi et al. 2017);
**OGD** (Farajtabar et al. 2020): 200 logit gradients stored per finished task, plain SGD (no momentum) as the base,
every parameter projected in class-IL and the output layer left unprojected in task-IL (the paper's multi-head rule).
OGD's learning rate, 0.1, was chosen before any OGD run from two naive-SGD pilots (seed 0, class-IL): lr 0.01 learned
each new task to 0.63–0.98 (diagonal of the accuracy matrix), lr 0.1 to 0.78–0.98, like AdamW's 0.74–0.98, so lr 0.1
matches the AdamW methods' plasticity (the pilots printed forgetting too, 0.86 and 0.91; it was not the criterion).
Because OGD runs on SGD, its own baseline is **naive (SGD)**, the same run without the projection. The row
"ewc λ=1e4" is a sensitivity check fixed before the runs, not part of the ordering.

Papers, beside ours: EWC "overcomes catastrophic forgetting" against plain SGD on permuted MNIST (Kirkpatrick et al.
2017); van de Ven & Tolias 2019 ("Three scenarios for continual learning") find that on split MNIST EWC helps in the
task-incremental scenario but fails in the class-incremental one, where only replay-based methods keep old classes;
experience replay with a tiny episodic memory reduces forgetting (Chaudhry et al. 2019); OGD forgets less than SGD on
permuted, rotated and split MNIST (Farajtabar et al. 2020; their split MNIST has a head per task, i.e. task-incremental).

What we saw (numbers from the tables below). **Task-IL: the ordering holds in every seed.** Forgetting: naive AdamW
0.166 [0.148, 0.192] against EWC 0.042, replay 0.017, power_law 0.016, nmc 0.011; naive SGD 0.112 against OGD 0.001
[−0.006, 0.003], the least of all (OGD also has the best ACC, 0.892). **Class-IL: it holds for the replay family
only.** Naive forgets 0.903 (ACC 0.159: only the last task is known). Replay (0.602), power_law (0.609) and nmc (0.410)
forget less in every seed; nmc's nearest-mean classifier raises replay's min-ACC from 0.028 to 0.321 and gives the
best ACC (0.431). EWC (0.904) and OGD (0.909 against naive SGD's 0.908) forget as much as naive: the per-seed differences
are within ±0.004, and the claim holds in 1 of 3 seeds for each. The sensitivity run with λ = 1e4 does not change
this for EWC in class-IL (0.906), while in task-IL it cuts EWC's forgetting from 0.042 to 0.004. OGD's projection
does change the class-IL trajectory (seed 0: task 0 still at 0.98 two steps after the switch where SGD is at 0.92),
but the old task reaches 0 within ~13 steps anyway. OGD keeps the old examples' true-class logits to first order,
while the new classes' logits grow on the old inputs and win the argmax. Refresh forgets as much as naive in both
scenarios (0.906 / 0.177): its δ = 1e-5 step barely moves the weights. **Cost** of one 1500-step sequence on one
thread of this 2-core box: 1.1–2.4 s of training (4.0–4.7 s for refresh, which adds a gradient per step) and 5.4–9.4 s
of process, except OGD, which takes 41–45 s of training and 46–51 s of process. OGD multiplies every gradient by a basis
of up to 800 directions × 78,858 parameters (252 MB in float32), so a step costs ~30 ms on average against ~0.8 ms
for SGD, and its checkpoint is 240 MB.

Verdict: **partly reproduced.** In the task-incremental scenario naive > EWC, replay and OGD in forgetting in 3/3
seeds, as the papers report. In the class-incremental scenario only replay (and power-law rehearsal and nmc) forgets
less than naive. EWC and OGD do not. For EWC that is van de Ven & Tolias' finding; Farajtabar et al.'s split MNIST
is task-incremental, so the paper does not speak to OGD in class-IL.
"""


def ordering_section() -> str:
    """Per scenario: the methods by median forgetting, and per seed whether naive forgets more than each method of
    the claim."""
    out = ["## Ordering by forgetting", ""]
    for scenario, title in SCENARIOS.items():
        medians = []
        for method in METHODS:
            runs = [Run(run_dir(HERE, arm(scenario, method), s)) for s in SEEDS
                    if has_summary(run_dir(HERE, arm(scenario, method), s))]
            values = [continual(r).get("forgetting") for r in runs]
            values = [v for v in values if v is not None]
            if values:
                medians.append((statistics.median(values), METHODS[method][0]))
        if not medians:
            continue
        medians.sort(reverse=True)
        out += [f"**{title}**, most to least forgetting (median over seeds): "
                + " > ".join(f"{label} {value:.3f}" for value, label in medians), ""]
        rows = []
        for method, baseline in CLAIM:
            diffs = []
            for s in SEEDS:
                a, b = run_dir(HERE, arm(scenario, method), s), run_dir(HERE, arm(scenario, baseline), s)
                if has_summary(a) and has_summary(b):
                    fa, fb = continual(Run(a)).get("forgetting"), continual(Run(b)).get("forgetting")
                    if fa is not None and fb is not None:
                        diffs.append(fb - fa)
            held = sum(d > 0 for d in diffs)
            rows.append([f"{METHODS[baseline][0]} > {METHODS[method][0]}", f"{held}/{len(diffs)}",
                         median_range(diffs, ".3f")])
        out += [table(["claim (forgetting)", "seeds where it holds", "baseline − method, forgetting"], rows), ""]
    return "\n".join(out)


if __name__ == "__main__":
    main(HERE, "Claim 9: forgetting of continual-learning methods on split MNIST-1D", ARMS, SEEDS, COLUMNS,
         seed_keys=SEED_KEYS, notes=NOTES)
    text = (HERE / "results.md").read_text()
    head, sep, rest = text.partition("## Over seeds")
    (HERE / "results.md").write_text(head + ordering_section() + "\n" + sep + rest)
