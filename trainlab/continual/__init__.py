"""Continual learning: task sequences as workloads, methods, continual evaluation and its metrics.

- :mod:`trainlab.continual.sequence` / :mod:`~trainlab.continual.sequences`: task sequences (split_mnist1d,
  permuted_mnist1d, modular_sequence, scole), registered as workloads;
- :mod:`~trainlab.continual.controller`: the trainer's side (masks, hooks, per-task evaluation);
- :mod:`~trainlab.continual.methods`: naive, replay, power_law, ewc, refresh, nmc (``continual.method``);
- :mod:`~trainlab.continual.metrics`: the accuracy matrix, ACC/BWT/FWT, forgetting, min-ACC, stability gaps;
- :mod:`~trainlab.continual.options`: the ``continual`` config section.
OGD and SketchOGD are optimizer wrappers (:mod:`trainlab.optim.ogd`, :mod:`trainlab.optim.sketchogd`).
"""
