"""The ``continual`` section of a run's config: the continual-learning method and continual evaluation.

``trainlab run workload=split_mnist1d continual.method=replay continual.memory=200``. The section applies to
task-sequence workloads (:class:`~trainlab.continual.sequence.TaskSequence`); on any other workload every option
must keep its default. Options of a method other than the one selected are refused, as in the ``dist`` section.
This module imports no torch: the config is resolved before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from trainlab.config import ConfigError, option

Method = Literal["naive", "replay", "power_law", "ewc", "refresh", "nmc"]


@dataclass(frozen=True)
class ContinualOptions:
    """How a task sequence is learned (``continual.method``) and evaluated."""

    method: Method = option("naive", help="naive: fine-tune on each task in turn; replay: experience replay from a "
                                          "reservoir buffer (Chaudhry et al. 2019); power_law: rehearsal of old "
                                          "tasks at a rate decaying as a power law of the time since they were "
                                          "seen (Gandhi et al. 2024); ewc: elastic weight consolidation "
                                          "(Kirkpatrick et al. 2017); refresh: unlearn-relearn after every step "
                                          "(Wang et al. 2024); nmc: a nearest-mean-of-exemplars classifier on the "
                                          "features, with replay (Rebuffi et al. 2017)")
    memory: int = option(200, ge=1, help="replay, power_law, nmc: examples kept in the memory buffer")
    replay_batch: int = option(32, ge=1, help="replay, power_law, nmc: memory examples added to every batch")
    power_law_exponent: float = option(1.0, gt=0.0, help="power_law: a task last seen s steps ago is rehearsed with "
                                                         "weight proportional to (1 + s)^-exponent")
    ewc_lambda: float = option(100.0, ge=0.0, help="ewc: weight of the quadratic penalty (lambda/2) F (theta - "
                                                   "theta*)^2")
    ewc_samples: int = option(200, ge=1, help="ewc: training examples the diagonal Fisher of a task is estimated on")
    ewc_gamma: float = option(1.0, ge=0.0, le=1.0, help="ewc: decay of the old Fisher when a task's is added, F <- "
                                                        "gamma F + F_t, anchored at the latest parameters (online "
                                                        "EWC; 1: the Fishers' sum)")
    refresh_delta: float = option(1e-5, gt=0.0, help="refresh: size of the refresh update")
    refresh_fisher: float = option(0.001, ge=0.0, help="refresh: weight of the Fisher in (1 + c F)^-1")
    refresh_noise: float = option(0.001, ge=0.0, help="refresh: scale of the Gaussian noise of the refresh update")
    refresh_samples: int = option(0, ge=0, help="refresh: training examples of a task its Fisher is estimated on "
                                                "(0: all of them, as the reference code)")
    refresh_decay: float = option(1e-5, ge=0.0, le=1.0, help="refresh: decay of the old Fisher when a task's is "
                                                             "added, F <- decay F + F_t (the reference's tau)")
    eval_examples: int = option(500, ge=1, help="validation examples per task in each evaluation (De Lange et al. "
                                                "use at most 1000)")
    dense_per_decade: int = option(8, ge=0, help="after each task switch, extra evaluations at this many "
                                                 "log-spaced steps per decade of steps since the switch (0: off)")
    gap_threshold: float = option(0.1, gt=0.0, le=1.0, help="stability_gap event: an old task's accuracy fell at "
                                                            "least this much below its value at the switch")


# Which options belong to which methods (the others must keep their defaults).
OPTION_OWNERS: dict[str, tuple[str, ...]] = {
    "memory": ("replay", "power_law", "nmc"), "replay_batch": ("replay", "power_law", "nmc"),
    "power_law_exponent": ("power_law",),
    "ewc_lambda": ("ewc",), "ewc_samples": ("ewc",), "ewc_gamma": ("ewc",),
    "refresh_delta": ("refresh",), "refresh_fisher": ("refresh",),
    "refresh_noise": ("refresh",), "refresh_samples": ("refresh",), "refresh_decay": ("refresh",),
}


def check_continual(options: ContinualOptions, sequence: bool) -> None:
    """Cross-option rules of the ``continual`` section (one-line :class:`ConfigError` s)."""
    defaults = ContinualOptions()
    if not sequence:
        changed = next((f.name for f in fields(options) if getattr(options, f.name) != getattr(defaults, f.name)),
                       None)
        if changed is not None:
            raise ConfigError(f"continual.{changed}", "applies to task-sequence workloads only (trainlab list "
                                                      "workloads: split_mnist1d, permuted_mnist1d, ...)")
        return
    for key, owners in OPTION_OWNERS.items():
        if getattr(options, key) != getattr(defaults, key) and options.method not in owners:
            raise ConfigError(f"continual.{key}", f"applies to continual.method={' / '.join(owners)} only, not to "
                                                  f"{options.method}")
