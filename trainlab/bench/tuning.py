"""Tuning rulesets (AlgoPerf): which hyperparameters each trial of a submission gets, and how trials become a score.

**External tuning.** A submission gives one search space for all workloads. On each workload it runs
``studies`` independent studies of ``trials`` quasi-random trials each; study ``s`` draws its points from a
scrambled Halton sequence seeded with ``s`` (low-discrepancy: five points cover a 2-D space far more evenly
than five random ones), and all its trials train with seed ``s``. The study's result is its best trial
(fastest time to target); the workload's result is the median over studies. A submission without a search
space runs one trial per study (its fixed hyperparameters).

**A list of points** (AlgoPerf's current external-tuning rules: a fixed list of configurations instead of a
distribution) is the other form of a search space: trial ``i`` of every study takes point ``i``, so a study
runs one trial per point, at most ``trials`` (a longer list runs its first ``trials`` points), and the studies
differ by their seed only. Every point has the same keys; :func:`make_points` checks and normalises them so
that a point's hyperparameters equal what ``choice()`` dimensions of the same values give.

**Self-tuning.** No hyperparameters: every trial uses the submission's defaults (the search space is
ignored), one trial per seed, with the budgets multiplied by :data:`SELF_TUNING_BUDGET_FACTOR` (3, as in
AlgoPerf v0.5's rules; the reference sheet's later 1.5 is one argument away).

Search-space dimensions: ``loguniform(lo, hi)``, ``uniform(lo, hi)``, ``choice(a, b, ...)``; written so on
the command line or in YAML (also ``{loguniform: [lo, hi]}``). Points: a YAML list of mappings
(``- {optimizer.lr: 1.0e-2, optimizer.weight_decay: 0.01}``) or a Python list of dicts.
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


Point = dict[str, Any]
Points = tuple[Point, ...]
SearchSpace = dict[str, Dim] | Points  # dimensions sampled quasi-randomly, or a fixed list of points
_VALUE_TYPES = "a number, a string, true/false, None or a list of numbers or strings"


def plain_value(value: Any) -> bool:
    """A value the config can hold as an option: a scalar, or a list of numbers or strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value)


def make_points(points: Any, name: str = "search_space") -> Points:
    """A search space given as a list of points, checked: a non-empty list of mappings with the same keys
    (point 0's), each value a plain value (:func:`plain_value`) and not a dimension. Keys are taken as given
    (the caller checks them); every point's keys are put in point 0's order, numbers written as strings
    (YAML 1.1 reads ``1e-2`` so) become numbers and lists tuples, as :func:`parse_dim` does with ``choice()``
    values. A mistake is a one-line :class:`ConfigError` keyed ``name`` or the point, ``name[i]``."""
    if not isinstance(points, (list, tuple)):
        raise ConfigError(name, f"expected a list of points (mappings of keys to values), got {shorten(points)}")
    if not points:
        raise ConfigError(name, "an empty list of points; give at least one point, or no search space")
    out: list[Point] = []
    keys: list[str] = []
    known: set[str] = set()
    for i, point in enumerate(points):
        where = f"{name}[{i}]"
        if not isinstance(point, Mapping):
            raise ConfigError(where, f"expected a mapping of keys to values, got {shorten(point)} "
                                     f"({type(point).__name__})")
        if not point:
            raise ConfigError(where, "an empty point; a point gives a value to every key of the search space")
        values = {str(k): v for k, v in point.items()}
        if i == 0:
            keys, known = list(values), set(values)
        missing = [k for k in keys if k not in values]
        extra = [k for k in values if k not in known]
        if missing or extra:
            what = f"lacks {shorten(missing[0])}, which" if missing else f"has {shorten(extra[0])}, which"
            raise ConfigError(where, f"{what} {name}[0] {'has' if missing else 'lacks'} (every point needs the same "
                                     f"keys: {shorten(keys)})")
        for key in keys:
            value = values[key]
            if not plain_value(value):
                raise ConfigError(where, f"{shorten(key)} is {shorten(value)} ({type(value).__name__}); expected "
                                         f"{_VALUE_TYPES}")
            if isinstance(value, str) and _DIM.match(value):
                raise ConfigError(where, f"{shorten(key)} is the dimension {shorten(value)}: a point holds values "
                                         "(a search space is either dimensions or a list of points)")
        out.append({key: _point_value(values[key]) for key in keys})
    return tuple(out)


def _point_value(value: Any) -> Any:
    value = _number(value)
    return tuple(value) if isinstance(value, list) else value


def halton_points(n: int, dims: int, seed: int) -> np.ndarray:
    """``n`` points of a scrambled Halton sequence in [0, 1)^dims, reproducible from ``seed``."""
    if dims == 0:
        return np.zeros((n, 0))
    from scipy.stats import qmc

    return qmc.Halton(d=dims, scramble=True, seed=seed).random(n)


def study_hyperparameters(space: Mapping[str, Dim] | Sequence[Point], trials: int,
                          study: int) -> list[dict[str, Any]]:
    """The hyperparameters of each trial of study ``study`` (keys in the search space's order). A list of
    points gives its first ``trials`` points, in order, whatever the study."""
    if not isinstance(space, Mapping):
        return [dict(point) for point in space[:trials]]
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


def plan_trials(space: Mapping[str, Dim] | Sequence[Point], ruleset: str, *, trials: int, studies: int,
                seeds: int) -> list[TrialPlan]:
    """All trials of one submission on one workload under ``ruleset``.

    External tuning with a search space: ``studies`` x ``trials``; with a list of points, ``studies`` x
    ``min(trials, len(points))``, trial ``i`` of every study taking point ``i``. Without one, or self-tuning:
    one trial per seed (``seeds`` repetitions). Study ``s`` always trains with seed ``s``, so repetitions pair
    across submissions.
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

