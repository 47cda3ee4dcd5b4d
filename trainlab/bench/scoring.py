"""Scores of submissions across workloads: performance profiles, the benchmark score, speedups with uncertainty.

Inputs are times to target in seconds, ``inf`` for a miss. ``times[submission][workload]`` is one number
(the median over repetitions); ``reps[submission][workload]`` the per-repetition list (repetition ``r`` trains
with seed ``r`` for every submission, so repetitions pair).

AlgoPerf's definitions (Dahl et al. 2023; ``../shared/reference/algorithms.md`` §6):

- ratio ``r_{s,w} = t_{s,w} / min_s' t_{s',w}``; a miss is ``inf``; a workload no one solves is ``inf`` for all;
- profile ``ρ_s(τ)`` = fraction of workloads with ``r_{s,w} <= τ``;
- benchmark score ``B_s = 1/(r_max - 1) ∫_1^{r_max} ρ_s(τ) dτ`` with ``r_max = 4``: ratios beyond ``r_max``
  count as never. ``ρ`` is a step function, so the integral is exact: each workload with ``r <= r_max``
  contributes ``(r_max - r) / (r_max - 1)``, averaged over workloads;
- speedup over the baseline: the geometric mean over workloads both solve of ``t_base / t_s``; and, as AlgoPerf
  counts it (:func:`algoperf_speedup`), over every workload with a miss counted as the workload's time budget.

Power (:func:`detectable_speedup`): the smallest speedup the run could have detected, so that "not
distinguishable" says how large a difference it would have seen.

Uncertainty: a bootstrap over repetitions (paired resampling) gives a confidence interval of the speedup;
a one-sided sign test over (workload, repetition) pairs -- does the submission reach the target first? a miss
loses to any hit, two misses tie -- and a sign-flip permutation test of the paired log time ratios give
p-values. A submission is *declared* faster only when it wins more pairs than it loses and the sign test's
p < 0.05 (and slower in the mirror case); otherwise the leaderboard says "not distinguishable".
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

R_MAX = 4.0
ALPHA = 0.05
# A clock's resolution for the verdict: times within a factor 1 + tie are a tie in the sign test. The cost clock
# charges every repetition of a workload the same measured step-cost ratio, so its measurement error is shared by
# all the pairs (not independent, as the sign test assumes): one configuration measured side by side with itself
# under load came out 0.92-1.06 of itself (30 workload measurements, benchmarks/RESULTS.md), so differences
# under 10% are not called.
TIE_TOLERANCE = {"cost": 0.10}

Times = Mapping[str, Mapping[str, float]]
Reps = Mapping[str, Mapping[str, Sequence[float]]]


def ratios(times: Times) -> dict[str, dict[str, float]]:
    """``r[s][w] = t[s][w] / min over submissions of t[.][w]`` (inf for misses and unsolved workloads)."""
    workloads = _workloads(times)
    best = {w: min((times[s].get(w, math.inf) for s in times), default=math.inf) for w in workloads}
    out: dict[str, dict[str, float]] = {}
    for s in times:
        out[s] = {}
        for w in workloads:
            t = times[s].get(w, math.inf)
            out[s][w] = math.inf if not math.isfinite(t) or not math.isfinite(best[w]) else (
                1.0 if t == best[w] else t / best[w])
    return out


def profile(times: Times, taus: Sequence[float] | np.ndarray, r_max: float = R_MAX) -> dict[str, np.ndarray]:
    """``ρ_s(τ)`` at each ``τ``: the fraction of workloads ``s`` solves within ``τ`` times the fastest (and r_max)."""
    taus = np.asarray(taus, dtype=float)
    out = {}
    for s, r in ratios(times).items():
        values = np.array([v if v <= r_max else math.inf for v in r.values()], dtype=float)
        n = max(len(values), 1)
        out[s] = (values[None, :] <= taus[:, None]).sum(axis=1) / n
    return out


def benchmark_score(times: Times, r_max: float = R_MAX) -> dict[str, float]:
    """AlgoPerf's normalised area under the profile from 1 to ``r_max``, in [0, 1]."""
    out = {}
    for s, r in ratios(times).items():
        values = list(r.values())
        parts = [(r_max - max(v, 1.0)) / (r_max - 1.0) for v in values if v <= r_max]
        out[s] = float(sum(parts) / len(values)) if values else 0.0
    return out


def geomean_speedup(base: Mapping[str, float], sub: Mapping[str, float]) -> tuple[float, int]:
    """Geometric mean of ``base[w] / sub[w]`` over the workloads both solve, and how many that is (nan if none)."""
    logs = [math.log(base[w] / sub[w]) for w in base
            if w in sub and math.isfinite(base[w]) and math.isfinite(sub[w]) and base[w] > 0 and sub[w] > 0]
    if not logs:
        return math.nan, 0
    return math.exp(sum(logs) / len(logs)), len(logs)


def algoperf_speedup(base: Mapping[str, float], sub: Mapping[str, float], budgets: Mapping[str, float]) -> float:
    """Geometric mean over every workload of ``t_base / t_sub``, a miss counting as the workload's time budget
    (AlgoPerf's convention: a submission that misses is charged the whole budget). Workloads without a budget
    are skipped; nan if none is left."""
    logs = []
    for w, budget in budgets.items():
        if w not in base or w not in sub or not math.isfinite(budget) or budget <= 0:
            continue
        b, s = (min(t, budget) if math.isfinite(t) else budget for t in (base[w], sub[w]))
        if b > 0 and s > 0:
            logs.append(math.log(b / s))
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def sign_test_can_reject(pairs: int, alpha: float = ALPHA) -> bool:
    """Whether a one-sided sign test over ``pairs`` untied pairs can reach p < alpha at all (all pairs won):
    ``0.5 ** pairs < alpha``, i.e. at least 5 pairs for alpha = 0.05."""
    return pairs > 0 and 0.5**pairs < alpha


def detectable_speedup(base: Mapping[str, Sequence[float]], sub: Mapping[str, Sequence[float]], *,
                       alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest geometric speedup (>= 1) this run could have detected with probability ``power`` at level
    ``alpha`` (one-sided): ``exp((z_{1-alpha} + z_power) * sd / sqrt(n))`` with ``sd`` the standard deviation of
    the paired ``log(t_base / t_sub)`` over the n repetitions both solved -- the normal approximation of a paired
    test of the mean log ratio. ``inf`` when nothing can be detected: fewer than 2 pairs both solved, or too few
    pairs for the sign test (the verdict's test) to ever reach ``alpha`` (:func:`sign_test_can_reject`)."""
    pairs = _pairs(base, sub)
    d = [math.log(b / s) for b, s in pairs if math.isfinite(b) and math.isfinite(s) and b > 0 and s > 0]
    if len(d) < 2 or not sign_test_can_reject(len(pairs), alpha):
        return math.inf
    from statistics import NormalDist, stdev

    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return math.exp(z * stdev(d) / math.sqrt(len(d)))


def median(values: Sequence[float]) -> float:
    """Median with misses as inf (so half or more misses make a miss)."""
    if not len(values):
        return math.inf
    ordered = sorted(values)
    n = len(ordered)
    return float(ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2)


def medians(reps: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {w: median(v) for w, v in reps.items()}


def median_ci(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the median of ``values`` (misses as inf, so a bound may be inf)."""
    if not len(values):
        return math.nan, math.nan
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = sorted(median(data[rng.integers(0, len(data), size=len(data))].tolist()) for _ in range(n_boot))
    lo = stats[math.floor((1 - level) / 2 * (n_boot - 1))]
    hi = stats[math.ceil((1 - (1 - level) / 2) * (n_boot - 1))]
    return float(lo), float(hi)


def bootstrap_speedup_ci(base: Mapping[str, Sequence[float]], sub: Mapping[str, Sequence[float]], *,
                         n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the speedup, resampling repetitions with replacement (paired across the two).

    Each resample takes the same repetition indices for every workload and both submissions, recomputes the
    per-workload medians, then the geometric-mean speedup. (nan, nan) when there is nothing to resample.
    """
    workloads = [w for w in base if w in sub]
    n = min((min(len(base[w]), len(sub[w])) for w in workloads), default=0)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        b = {w: median([base[w][i] for i in idx]) for w in workloads}
        s = {w: median([sub[w][i] for i in idx]) for w in workloads}
        value, used = geomean_speedup(b, s)
        if used:
            stats.append(value)
    if not stats:
        return math.nan, math.nan
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _pairs(base: Mapping[str, Sequence[float]], sub: Mapping[str, Sequence[float]]) -> list[tuple[float, float]]:
    return [(b, s) for w in base if w in sub for b, s in zip(base[w], sub[w])]


def sign_test(base: Mapping[str, Sequence[float]], sub: Mapping[str, Sequence[float]], *,
              tie: float = 0.0) -> tuple[int, int, float]:
    """(wins, losses, one-sided p) of "the submission reaches the target first", over paired repetitions.

    A hit beats a miss; two misses, and two times within a factor ``1 + tie`` of each other, are ties and are
    dropped (``tie``: the clock's resolution, :data:`TIE_TOLERANCE`). ``p = P(X >= wins)`` for
    ``X ~ Binomial(wins + losses, 1/2)``; 1.0 when there is no untied pair.
    """
    wins = losses = 0
    for b, s in _pairs(base, sub):
        if math.isfinite(b) and math.isfinite(s) and b > 0 and s > 0 and abs(math.log(s / b)) <= math.log1p(tie):
            continue
        if s < b:
            wins += 1
        elif b < s:
            losses += 1
    n = wins + losses
    if n == 0:
        return 0, 0, 1.0
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n
    return wins, losses, float(p)


def permutation_test(base: Mapping[str, Sequence[float]], sub: Mapping[str, Sequence[float]], *,
                     n_random: int = 20000, seed: int = 0) -> tuple[float, int]:
    """One-sided sign-flip permutation p-value of mean ``log(t_base / t_sub)`` > 0, and the number of pairs.

    Uses the pairs both solved. Exact (all 2^n sign flips) for n <= 16 pairs, else ``n_random`` random flips.
    """
    d = np.array([math.log(b / s) for b, s in _pairs(base, sub)
                  if math.isfinite(b) and math.isfinite(s) and b > 0 and s > 0])
    n = len(d)
    if n == 0:
        return 1.0, 0
    observed = d.mean()
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
    means = (signs * d).mean(axis=1)
    return float(np.mean(means >= observed - 1e-12)), n


def _workloads(times: Times) -> list[str]:
    seen: dict[str, None] = {}
    for per in times.values():
        for w in per:
            seen.setdefault(w, None)
    return list(seen)
