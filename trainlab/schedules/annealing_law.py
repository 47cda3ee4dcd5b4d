"""The learning-rate annealing scaling law (Tissue, Wang, Yao, Zhang & Liu 2024, "Scaling Law with Learning
Rate Annealing", arXiv:2408.11029): predict a whole loss curve from its learning-rate schedule.

    L(s) = L0 + A · S1(s) ** (-alpha) - C · S2(s)

    S1(s) = Σ_{i<=s} η_i                          forward area: how far the lr has carried the weights
    S2(s) = Σ_{i<=s} m_i,  m_i = λ m_{i-1} + (η_{i-1} - η_i),  m_0 = 0,  λ = 0.999 by default
                                                  annealing area: the loss drop that lr decay buys,
                                                  with a momentum-like delay of about 1 / (1 - λ) steps

Fit the four parameters on one run's curve (any schedule with some decay, e.g. cosine) and predict the curve
of another schedule (e.g. WSD) at the same base settings.

Provenance and what was checked: the definitions above (in particular the momentum form of ``S2`` and
``λ = 0.999``) came to this project from a third-party reproduction, not from the paper's text, which could
not be consulted here. Verified in tests/schedules/test_annealing_law.py: the recursion equals the
closed form ``S2(s) = Σ_{i<=s} Σ_{1<=k<=i} λ^(i-k) (η_{k-1} - η_k)``; ``S2 = 0`` for a constant lr; for
``λ = 0`` it is the drop so far ``η_0 - η_s`` and for ``λ = 1`` the area ``Σ_{i<=s} (η_0 - η_i)`` between the
peak and the schedule (λ = 0.999 sits near the latter over a few hundred steps); and ``fit`` recovers
known parameters from synthetic curves and predicts another schedule's curve. Whether ``λ = 0.999`` is the
paper's recommended value, and how the paper treats warm-up, are not verified.

Conventions of this implementation:

- Learning rates are divided by ``lr_scale`` (the fitted run's peak lr, stored in :class:`LawParams`)
  before ``S1`` and ``S2`` are formed, so ``A`` and ``C`` are in units of peak-lr steps; predicting a run
  with another base lr uses the same ``lr_scale`` and so sees the larger or smaller areas.
- Warm-up is left out of ``S2``: differences ``η_{i-1} - η_i`` count only from the step at which the lr
  first reaches its maximum (otherwise the rise of a warm-up would enter ``S2`` as a large negative
  "annealing" that λ = 0.999 remembers for thousands of steps). It is counted in ``S1``.
- By default the fit uses the losses from that same step on (the warm-up part of the curve is not
  described by the law).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainlab.config import ConfigError, coerce
from trainlab.errors import RunDirError
from trainlab.rundir import RunDir
from trainlab.schedules.refined import finite_column


@dataclass(frozen=True)
class LawParams:
    """Fitted law: ``L = L0 + A · S1^-alpha - C · S2`` with areas of ``lr / lr_scale``."""

    L0: float
    A: float
    alpha: float
    C: float
    lam: float = 0.999
    lr_scale: float = 1.0
    rmse: float = float("nan")  # root-mean-square residual of the fit, in loss units (binned values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warmup_end(lrs: np.ndarray) -> int:
    """The first step at which the learning rate reaches its maximum (0 without warm-up)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    return int(np.argmax(lrs >= lrs.max() * (1 - 1e-12))) if len(lrs) else 0


def areas(lrs: np.ndarray, lam: float = 0.999, lr_scale: float | None = None,
          start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(S1, S2)`` per step for the learning rates ``lrs`` (one per optimizer step).

    ``lr_scale`` defaults to ``max(lrs)``; differences count in ``S2`` from ``start`` on (default: the end of
    warm-up, :func:`warmup_end`).
    """
    eta = np.asarray(lrs, dtype=np.float64) / (lr_scale if lr_scale is not None else float(np.max(lrs)))
    s1 = np.cumsum(eta)
    drops = np.zeros_like(eta)
    drops[1:] = eta[:-1] - eta[1:]
    first = warmup_end(eta) if start is None else start
    drops[: first + 1] = 0.0
    momentum = np.empty_like(drops)
    m = 0.0
    for i, d in enumerate(drops.tolist()):  # a plain loop: ~1 s per million steps, no scipy.signal import
        m = lam * m + d
        momentum[i] = m
    return s1, np.cumsum(momentum)


def _law(s1: np.ndarray, s2: np.ndarray, L0: float, A: float, alpha: float, C: float) -> np.ndarray:
    return L0 + A * np.power(np.maximum(s1, 1e-12), -alpha) - C * s2


def predict(params: LawParams, lrs: np.ndarray) -> np.ndarray:
    """Predicted loss at every step of a run whose per-step learning rates are ``lrs``."""
    s1, s2 = areas(lrs, params.lam, params.lr_scale)
    return _law(s1, s2, params.L0, params.A, params.alpha, params.C)


def _bin_mean(x: np.ndarray, size: int) -> np.ndarray:
    if size <= 1:
        return x
    n = len(x) // size * size
    head = x[:n].reshape(-1, size).mean(axis=1)
    return np.append(head, x[n:].mean()) if n < len(x) else head


def fit(lrs: np.ndarray, losses: np.ndarray, *, lam: float = 0.999, start: int | None = None, bin: int = 1,
        space: Literal["loss", "log"] = "loss", robust: bool = False, constrained: bool = True) -> LawParams:
    """Fit ``L0, A, alpha, C`` to a loss curve (``losses[i]`` after/at step ``i`` with lr ``lrs[i]``).

    ``losses`` may hold NaN for steps without a measurement. Steps before ``start`` (default: the end of
    warm-up) are left out; with ``bin > 1`` the losses and the law's predictions are both averaged over
    consecutive bins of ``bin`` steps before they are compared (a noisy per-batch loss is smoothed without
    the lag an EMA would add). ``space="log"`` fits log-losses (relative errors). ``robust`` uses a
    soft-L1 loss against outliers. ``constrained`` (default) keeps ``L0 >= 0`` (a loss floor such as
    cross-entropy's) and ``C >= 0`` (annealing lowers the loss, as in the paper); ``A >= 0`` always.

    Initialisation: for each ``alpha`` on a grid the law is linear in ``(L0, A, C)``, solved by bounded
    linear least squares (``A >= 0``); the best grid point seeds ``scipy.optimize.least_squares`` over
    all four parameters.
    """
    from scipy.optimize import least_squares, lsq_linear

    lrs = np.asarray(lrs, dtype=np.float64)
    y_all = np.asarray(losses, dtype=np.float64)
    if lrs.shape != y_all.shape:
        raise ValueError(f"lrs and losses differ in length ({len(lrs)} vs {len(y_all)})")
    lr_scale = float(lrs.max())
    if not lr_scale > 0:
        raise ValueError("learning rates must have a positive maximum")
    s1, s2 = areas(lrs, lam, lr_scale)
    first = warmup_end(lrs) if start is None else start
    keep = np.arange(len(lrs)) >= first
    keep &= np.isfinite(y_all)
    idx = np.flatnonzero(keep)
    if len(idx) < 5:
        raise ValueError(f"need at least 5 finite losses after step {first}, got {len(idx)}")
    # Bins over consecutive kept steps (gaps in the losses simply shorten the series).
    size = max(1, int(bin))
    y = _bin_mean(y_all[idx], size)

    def f1(a: float) -> np.ndarray:
        return _bin_mean(np.power(s1[idx], -a), size)

    b2 = _bin_mean(s2[idx], size)
    target = np.log(y) if space == "log" else y

    def model(p: np.ndarray) -> np.ndarray:
        L0, logA, alpha, C = p
        return L0 + np.exp(logA) * f1(alpha) - C * b2

    def residual(p: np.ndarray) -> np.ndarray:
        pred = model(p)
        if space == "log":
            return np.log(np.maximum(pred, 1e-12)) - target
        return pred - target

    best: tuple[float, np.ndarray] | None = None
    has_s2 = bool(np.any(b2 != 0))
    low = 0.0 if constrained else -np.inf
    for alpha in np.concatenate([np.linspace(0.02, 1.0, 50), np.linspace(1.1, 3.0, 20)]):
        cols = [np.ones_like(y), f1(alpha)] + ([-b2] if has_s2 else [])
        X = np.stack(cols, axis=1)
        lb = [low, 0.0] + ([low] if has_s2 else [])
        ub = [np.inf] * len(cols)
        sol = lsq_linear(X, y, bounds=(lb, ub))
        coef = list(sol.x) + ([] if has_s2 else [0.0])
        p0 = np.array([coef[0], np.log(max(coef[1], 1e-12)), alpha, coef[2]])
        cost = float(np.sum(residual(p0) ** 2)) if space == "log" else float(np.sum((X @ sol.x - y) ** 2))
        if np.isfinite(cost) and (best is None or cost < best[0]):
            best = (cost, p0)
    assert best is not None
    p0 = best[1]
    lower = [low, -30.0, 0.0, low if has_s2 else -1.0]  # without any annealing C has no effect: reported as 0
    upper = [np.inf, 30.0, 10.0, np.inf if has_s2 else 1.0]
    p0 = np.clip(p0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    # soft-L1 treats residuals beyond ~1.5 robust standard deviations (of the initial fit) as outliers
    scale = float(1.4826 * np.median(np.abs(residual(p0)))) if robust else 1.0
    sol = least_squares(residual, p0, bounds=(lower, upper), loss="soft_l1" if robust else "linear",
                        f_scale=max(1.5 * scale, 1e-12), x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                        max_nfev=2000)
    L0, logA, alpha, C = sol.x
    rmse = float(np.sqrt(np.mean((model(sol.x) - y) ** 2)))
    return LawParams(float(L0), float(np.exp(logA)), float(alpha), float(C) if has_s2 else 0.0, lam, lr_scale, rmse)


def run_curve(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(lrs, losses) per step from ``run_dir/trace.jsonl``; losses are NaN where the trace has none.

    Steps missing from the trace get the lr of linear interpolation (a torn last line is skipped). A missing
    trace, or one with fewer than 2 rows with a finite lr, is a one-line :class:`RunDirError`.
    """
    rd = RunDir(run_dir)
    rows = rd.trace(required=True)
    lr_steps, lr_values = finite_column(rows, "lr")
    if len(lr_steps) < 2:
        raise RunDirError(f"{rd.trace_path} holds {len(lr_steps)} step(s) with a finite lr; need at least 2")
    steps = np.arange(int(lr_steps.max()) + 1)
    lrs = np.interp(steps, lr_steps, lr_values)
    losses = np.full(len(steps), np.nan)
    loss_steps, loss_values = finite_column(rows, "loss")
    losses[loss_steps] = loss_values
    return lrs, losses


def fit_run(run_dir: str | Path, *, lam: float = 0.999, bin: int | None = None, start: int | None = None,
            space: Literal["loss", "log"] = "loss", robust: bool = True, constrained: bool = True) -> LawParams:
    """Fit the law to a run's per-step trace (``trace.jsonl``: ``lr`` and per-batch ``loss`` per step).

    The per-batch loss is noisy: it is smoothed by binned means over ``bin`` consecutive steps (default:
    ``max(1, steps // 100)``, about 100 points), compared with the law's prediction averaged over the same
    bins -- unlike an EMA this adds no lag. ``robust`` (default on) fits with a soft-L1 loss.
    """
    lrs, losses = run_curve(run_dir)
    size = bin if bin is not None else max(1, len(lrs) // 100)
    return fit(lrs, losses, lam=lam, start=start, bin=size, space=space, robust=robust, constrained=constrained)


def schedule_lrs(schedule_name: str, total_steps: int, base_lr: float, **schedule_options: Any) -> np.ndarray:
    """Per-step learning rates ``base_lr · multiplier(t)`` of a registered schedule."""
    from trainlab.schedules.registry import build

    multiplier = build(schedule_name, total_steps, **schedule_options)
    return base_lr * np.array([multiplier(t) for t in range(total_steps)], dtype=np.float64)


def hypothetical_lrs(fit_run: str | Path, spec: Sequence[str]) -> np.ndarray:
    """Per-step lrs of a run described by ``KEY=VALUE`` words (``schedule``, ``schedule.KEY``, ``steps``, ``lr``),
    the steps and lr not given taken from ``fit_run``'s ``config.yaml`` (``trainlab law --predict``).

    A word that is not ``KEY=VALUE`` or names another key, a missing schedule, or steps < 1 / lr <= 0 is a
    :class:`ConfigError`; a ``config.yaml`` that is missing or damaged is a :class:`RunDirError`.
    """
    from trainlab.schedules.registry import names as schedule_names

    config = RunDir(fit_run).config(required=True)
    optimizer = config.get("optimizer")
    steps: Any = config.get("steps", 0)
    lr: Any = optimizer.get("lr", 0.0) if isinstance(optimizer, dict) else 0.0
    name, options = None, {}
    for word in spec:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError("law --predict", f"{word!r} is not KEY=VALUE; allowed keys: schedule, schedule.KEY, "
                              "steps, lr")
        if key == "schedule":
            name = value
        elif key.startswith("schedule."):
            options[key.removeprefix("schedule.")] = value
        elif key == "steps":
            steps = coerce("steps", value, int)
        elif key == "lr":
            lr = coerce("lr", value, float)
        else:
            raise ConfigError(key, "unknown key for law --predict; allowed: schedule, schedule.KEY, steps, lr")
    if name is None:
        raise ConfigError("law --predict", "give the schedule to predict: schedule=NAME (one of "
                          f"{', '.join(schedule_names())})")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (steps, lr))
    if not (numbers and int(steps) >= 1 and lr > 0):
        raise ConfigError("law --predict", f"needs steps >= 1 and lr > 0 (got steps={steps}, lr={lr})")
    return schedule_lrs(name, int(steps), float(lr), **options)


def predict_for_schedule(params: LawParams, schedule_name: str, total_steps: int, base_lr: float,
                         **schedule_options: Any) -> np.ndarray:
    """Predicted per-step loss of a run with schedule ``schedule_name`` (``total_steps`` steps, peak lr
    ``base_lr``, options as for ``schedule.<key>=``), e.g.
    ``predict_for_schedule(fit_run(cosine_dir), "wsd", 3000, 3e-3, decay_frac=0.2)``."""
    return predict(params, schedule_lrs(schedule_name, total_steps, base_lr, **schedule_options))
