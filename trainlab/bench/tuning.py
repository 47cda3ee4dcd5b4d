"""Tuning rulesets (AlgoPerf): which hyperparameters each trial of a submission gets, and how trials become a score.

**External tuning.** A submission gives one search space for all workloads. On each workload it runs
``studies`` independent studies of ``trials`` quasi-random trials each; study ``s`` draws its points from a
scrambled Halton sequence seeded with ``s`` (low-discrepancy: five points cover a 2-D space far more evenly
than five random ones), and all its trials train with seed ``s``. The study's result is its best trial
(fastest time to target); the workload's result is the median over studies. A submission without a search
space runs one trial per study (its fixed hyperparameters).

**Self-tuning.** No hyperparameters: every trial uses the submission's defaults (the search space is
ignored), one trial per seed, with the budgets multiplied by :data:`SELF_TUNING_BUDGET_FACTOR` (3, as in
AlgoPerf v0.5's rules; the reference sheet's later 1.5 is one argument away).

Search-space dimensions: ``loguniform(lo, hi)``, ``uniform(lo, hi)``, ``choice(a, b, ...)``; written so on
the command line or in YAML (also ``{loguniform: [lo, hi]}``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from trainlab.config import ConfigError, parse_yaml
from trainlab.errors import shorten

Ruleset = Literal["external", "self"]
RULESETS: tuple[str, ...] = ("external", "self")
SELF_TUNING_BUDGET_FACTOR = 3.0
DEFAULT_TRIALS = 5


@dataclass(frozen=True)
class Dim:
    """One search-space dimension; :meth:`value` maps ``u`` in [0, 1) onto it."""

    kind: Literal["loguniform", "uniform", "choice"]
    values: tuple[Any, ...]

    def value(self, u: float) -> Any:
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        lo, hi = self.values
        if self.kind == "loguniform":
            return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
        return float(lo + u * (hi - lo))

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(str(v) for v in self.values)})"


_DIM = re.compile(r"^\s*(loguniform|log_uniform|uniform|choice)\s*\((.*)\)\s*$", re.DOTALL)


def parse_dim(key: str, value: Any) -> Dim | None:
    """``"loguniform(1e-4, 1e-2)"`` or ``{"choice": [a, b]}`` -> a :class:`Dim`; anything else -> None."""
    if isinstance(value, Mapping) and len(value) == 1:
        kind, args = next(iter(value.items()))
        if str(kind) in ("loguniform", "log_uniform", "uniform", "choice") and isinstance(args, (list, tuple)):
            return _make_dim(key, str(kind), [_number(a) for a in args])
        return None
    if not isinstance(value, str):
        return None
    match = _DIM.match(value)
    if not match:
        return None

    args = parse_yaml(f"[{match.group(2)}]", f"the arguments of {shorten(value)}", lambda m: ConfigError(key, m))
    return _make_dim(key, match.group(1), [_number(a) for a in args])


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; numbers written so are numbers here."""
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


_RANGE_KINDS: tuple[Literal["loguniform", "uniform"], ...] = ("loguniform", "uniform")


def _make_dim(key: str, kind: str, args: list[Any]) -> Dim:
    kind = "loguniform" if kind == "log_uniform" else kind
    if kind == "choice":
        if not args:
            raise ConfigError(key, "choice() needs at least one value")
        return Dim("choice", tuple(tuple(a) if isinstance(a, list) else a for a in args))
    if kind not in _RANGE_KINDS:  # the callers match only these names: this narrows kind for Dim
        raise ConfigError(key, f"unknown dimension {kind}(); allowed: loguniform, log_uniform, uniform, choice")
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(key, f"{kind}(lo, hi) needs two numbers, got {args!r}")
    lo, hi = float(args[0]), float(args[1])
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise ConfigError(key, f"{kind}(lo, hi) needs {'0 < ' if kind == 'loguniform' else ''}lo < hi, got {args!r}")
    return Dim(kind, (lo, hi))


def halton_points(n: int, dims: int, seed: int) -> np.ndarray:
    """``n`` points of a scrambled Halton sequence in [0, 1)^dims, reproducible from ``seed``."""
    if dims == 0:
        return np.zeros((n, 0))
    from scipy.stats import qmc

    return qmc.Halton(d=dims, scramble=True, seed=seed).random(n)


def study_hyperparameters(space: Mapping[str, Dim], trials: int, study: int) -> list[dict[str, Any]]:
    """The hyperparameters of each trial of study ``study`` (keys in the search space's order)."""
    keys = list(space)
    if not keys:
        return [{}]
    points = halton_points(trials, len(keys), seed=study)
    return [{k: space[k].value(float(u)) for k, u in zip(keys, row)} for row in points]


@dataclass(frozen=True)
class TrialPlan:
    """One trial of a submission on a workload: its study, index in the study, seed and hyperparameters."""

    study: int
    index: int
    seed: int
    hyperparameters: dict[str, Any]


def plan_trials(space: Mapping[str, Dim], ruleset: str, *, trials: int, studies: int, seeds: int) -> list[TrialPlan]:
    """All trials of one submission on one workload under ``ruleset``.

    External tuning with a search space: ``studies`` x ``trials``. Without one, or self-tuning: one trial per
    seed (``seeds`` repetitions). Study ``s`` always trains with seed ``s``, so repetitions pair across
    submissions.
    """
    if ruleset not in RULESETS:
        raise ConfigError("ruleset", f"expected one of {', '.join(RULESETS)}, got {ruleset!r}")
    if ruleset == "external" and space:
        return [TrialPlan(s, i, s, hp) for s in range(studies)
                for i, hp in enumerate(study_hyperparameters(space, trials, s))]
    return [TrialPlan(s, 0, s, {}) for s in range(seeds)]


def budget_factor(ruleset: str) -> float:
    return SELF_TUNING_BUDGET_FACTOR if ruleset == "self" else 1.0


def study_best(times: Sequence[float]) -> tuple[float, int | None]:
    """The fastest time to target among a study's trials and its index (inf, None when all missed)."""
    best, index = math.inf, None
    for i, t in enumerate(times):
        if t < best:
            best, index = t, i
    return best, index

