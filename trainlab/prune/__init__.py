"""Pruning: masks that zero weights during training, on a schedule, and runs that start from another run's masks.

``trainlab run prune.method=magnitude prune.sparsity=0.9`` prunes 90% of the prunable weights (Linear and
convolution weights but the output head's) by |w| (Han et al. 2015), gradually from step ``prune.start`` to
``prune.end`` (default: the last step) on Zhu & Gupta's 2017 cubic schedule; ``prune.method=neurons`` removes whole
hidden units (Liu et al. 2019). ``prune.from_run=RUN prune.reset=finetune|rewind|scratch`` trains with that run's
final masks from its final weights, its weights after ``prune.rewind_step`` steps (lottery tickets: Frankle &
Carbin 2019; Frankle et al. 2020) or a fresh initialisation. Metrics rows carry ``sparsity``; summary.json's
``prune`` entry has the final fractions and per-layer counts; checkpoints hold the masks.

Modules, one job each: :mod:`~trainlab.prune.schedule` (when, how much), :mod:`~trainlab.prune.layers` (what is
prunable), :mod:`~trainlab.prune.masks` (which entries, from weights), :mod:`~trainlab.prune.pruner` (a run's masks
and what each step does with them), :mod:`~trainlab.prune.source` (another run's masks and weights; rewind files),
:mod:`~trainlab.prune.setup` (building it from the config), :mod:`~trainlab.prune.methods` (the names).

Iterative pruning is a chain of runs, each starting from the previous one's masks (pruned weights stay pruned)::

    # Han et al. 2015: train dense, then prune + retrain in rounds (finetune keeps the trained weights)
    trainlab run steps=3000 --out r0
    trainlab run init_from=r0 prune=magnitude prune.sparsity=0.5 prune.start=0 prune.end=1000 --out r1
    trainlab run prune.from_run=r1 prune=magnitude prune.sparsity=0.75 prune.end=1000 --out r2

    # Lottery tickets (Frankle & Carbin 2019): train, prune 20% at the end, reset survivors to theta_0, repeat
    trainlab run prune=magnitude prune.sparsity=0.2 prune.start=3000 steps=3000 --out t1
    trainlab run prune.from_run=t1 prune.reset=rewind prune=magnitude prune.sparsity=0.36 prune.start=3000 \\
        steps=3000 --out t2                  # 1 - 0.8^2; each round rewinds to t1's theta_0
    # with rewinding to theta_k (Frankle et al. 2020): add prune.rewind_step=k to every round

    # Liu et al. 2019: the same pruned architecture fine-tuned vs trained from scratch
    trainlab run prune=neurons prune.sparsity=0.5 prune.start=3000 steps=3000 --out p
    trainlab run prune.from_run=p prune.reset=finetune steps=1000 --out ft
    trainlab run prune.from_run=p prune.reset=scratch steps=3000 --out scratch
"""

from trainlab.prune.pruner import Pruner
from trainlab.prune.setup import build_pruner

__all__ = ["Pruner", "build_pruner"]
