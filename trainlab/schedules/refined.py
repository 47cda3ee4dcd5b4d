"""Refined schedules from an earlier run's gradient norms (Defazio, Cutkosky, Mehta & Mishchenko 2023, "When,
Why and How Much? Adaptive Learning Rate Scheduling by Refinement"; reference code:
facebookresearch/adaptive_scheduling, ``find_closed_form_schedule``).

The paper bounds the last iterate's suboptimality for a schedule that weighs step ``t`` by ``w_t`` and
finds, for observed gradient norms ``g_t``, the bound-minimising schedule in closed form::

    ĝ   = median_filter(g, width 2·⌊τ n / 2⌋ + 1)       (τ = 0.1; the series is reflect-padded at its end)
    w_t = ĝ_t ** (-power)                               (power 2: SGD-like; 1: Adam-like, see below)
    s_t = w_t · Σ_{p > t} w_p,   s_{n-1} = 0,   then s / max(s)

With constant norms ``s_t ∝ n - 1 - t``: linear decay to 0 at the last step, the paper's worst-case optimal
schedule (``linear`` in :mod:`.basic` is the same line reaching 0 one step later, at ``T``). Norms that are
large early and fall give a warm-up (``s`` rises while ``w`` grows); norms that rise towards the end give a
faster-than-linear final anneal. Rising norms alone give no warm-up: ``w`` and the tail sum both fall, so
``s`` falls from step 0 (both tested).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainlab.config import ConfigError, option
from trainlab.errors import RunDirError
from trainlab.rundir import RunDir
from trainlab.schedules.registry import Multiplier, register


def refine(grad_norms: np.ndarray, tau: float = 0.1, power: float = 2.0) -> np.ndarray:
    """The refined schedule (peak 1, last entry 0) of a gradient-norm sequence, one value per step.

    ``tau`` is the median filter's width as a fraction of the sequence (``2·⌊τn/2⌋ + 1`` steps; 0 or a
    width of 1 disables it); ``power`` is 2 for SGD-like optimizers and 1 for Adam-like ones (the paper
    uses ``ℓ1`` norms there). Norms of zero are clamped to a tiny positive value.
    """
    from scipy.ndimage import median_filter

    g = np.asarray(grad_norms, dtype=np.float64).ravel()
    n = len(g)
    if n < 2:
        raise ValueError(f"refine needs at least 2 gradient norms, got {n}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError("gradient norms must be finite and non-negative")
    if not np.any(g > 0):
        raise ValueError("gradient norms are all zero")
    width = 2 * int(tau * n // 2) + 1
    if width > 1:
        # Reflect-pad the end only (as the reference code does) so the final rise of the norms is not
        # flattened by the filter's edge handling.
        pad = 2 * width
        g = median_filter(np.pad(g, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    g = np.maximum(g, g.max() * 1e-12)
    w = g ** (-float(power))
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # Σ_{p > t} w_p
    s = w * tail
    return s / s.max()


def resample(values: np.ndarray, total: int) -> np.ndarray:
    """``values`` (one per step of a run of ``len(values)`` steps) stretched to ``total`` steps by linear
    interpolation on the normalised time axis ``t / (steps - 1)``: first and last steps map onto each
    other. The result is renormalised to peak 1."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if total == n:
        return values.copy()
    if total == 1:
        return np.ones(1)
    out = np.interp(np.linspace(0.0, 1.0, total), np.linspace(0.0, 1.0, n), values)
    peak = out.max()
    return out / peak if peak > 0 else out


def finite_column(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows whose ``key`` is a finite number (JSON null or "inf" are skipped)."""
    steps, values = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _cached_norms(run_dir: str, stamp: tuple[int, int]) -> np.ndarray:
    """A trace's finite gradient norms; cached by the trace's (mtime, size) ``stamp``: validation, the config
    check and the trainer each build the schedule, and a long run's trace is large."""
    _, norms = finite_column(RunDir(run_dir).trace(required=True), "grad_norm")
    norms.setflags(write=False)
    return norms


def load_grad_norms(run_dir: str, key: str = "schedule.from_run") -> np.ndarray:
    """The finite gradient norms of a run's trace, or a one-line ``ConfigError`` naming the file."""
    if not run_dir:
        raise ConfigError(key, "required: a run directory whose trace.jsonl holds gradient norms "
                               "(e.g. schedule.from_run=runs/NAME)")
    rd = RunDir(run_dir)
    try:
        stat = rd.trace_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)  # no trace: reading it raises the error that says so (errors are not cached)
    try:
        norms = _cached_norms(str(rd.path.resolve()), stamp)
    except RunDirError as err:
        raise ConfigError(key, str(err)) from None
    if len(norms) < 2:
        raise ConfigError(key, f"{rd.trace_path} holds {len(norms)} step(s) with a finite grad_norm; need at least 2")
    return norms


@dataclass(frozen=True)
class RefinedOptions:
    from_run: str = option("", help="run directory whose trace.jsonl gradient norms are refined (required)")
    tau: float = option(0.1, ge=0.0, le=1.0, help="median-filter width as a fraction of the trace")
    power: float = option(2.0, gt=0.0, help="w = norm ** -power: 2 for SGD-like, 1 for Adam-like optimizers")

    def validate(self) -> None:
        load_grad_norms(self.from_run, key="from_run")


@register("refined", options=RefinedOptions)
def refined(opts: RefinedOptions, total: int) -> Multiplier:
    """Refined schedule from a previous run's gradient norms (Defazio et al. 2023, "When, Why and How Much?").

    ``schedule=refined schedule.from_run=RUN_DIR`` reads ``RUN_DIR/trace.jsonl`` (one row per optimizer step;
    a torn last line is skipped, rows without a finite ``grad_norm`` too) and returns, per step,
    ``s_t = w_t Σ_{p>t} w_p / max`` with ``w = median_filter(g, 2⌊τn/2⌋+1) ** -power``. Units: steps; the
    first step is the schedule's own value (warm-up emerges from the norms, no separate warm-up option) and
    the last step ``T - 1`` has multiplier 0.

    Defaults ``tau = 0.1`` and ``power = 2`` (the paper's SGD setting). ``power = 1`` suits Adam-like
    optimizers; the paper then weighs by the gradient's ``ℓ1`` norm, while the trace records the ``ℓ2``
    norm, which stands in for it here.

    When the new run has ``T`` steps and the trace ``n != T``, the refined sequence is resampled by linear
    interpolation on the normalised time axis (step ``t`` of the new run reads position
    ``t·(n-1)/(T-1)`` of the old one), then renormalised to peak 1. ``from_run`` is required; a missing
    directory, or a trace that is absent or has fewer than 2 usable rows, is a ``ConfigError`` on
    ``schedule.from_run`` naming the file.
    """
    values = resample(refine(load_grad_norms(opts.from_run), opts.tau, opts.power), total).tolist()
    last = len(values) - 1

    def f(step: int) -> float:
        return values[min(max(step, 0), last)]

    return f
