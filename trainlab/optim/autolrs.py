"""AutoLRS (Jin et al. 2021, "AutoLRS: Automatic Learning-Rate Schedule by Bayesian Optimization on the Fly",
ICLR 2021; reference code ``YuchenJin/autolrs``), a self-tuning wrapper around any registry optimizer.

Training is cut into *stages*. At the start of a stage the wrapper snapshots the parameters and the base
optimizer's state, then searches for the stage's constant learning rate:

1. for each of ``candidates`` (k) learning rates, restore the snapshot and train ``explore_steps`` (τ') steps
   at that lr, recording the training loss of every step (the trainer hands it over through
   :meth:`AutoLRS.observe_loss` after each step);
2. forecast the loss after a full stage from those τ' losses with the paper's exponential model
   ``L(t) = a·exp(-b·t) + c`` (b > 0; a and c by least squares for each b, b by a bounded 1-D search: the
   reference code's variable projection), evaluated at ``t = τ`` steps after the snapshot, with two guards for
   short noisy windows (:func:`forecast_window`: an unstable window is forecast as its current loss; b >= 1/τ');
3. fit a Gaussian process (:class:`GaussianProcess`: squared-exponential kernel on log lr scaled to [0, 1],
   standardised targets, length scale by marginal likelihood) to (log lr -> forecast) and pick the next
   candidate by the lower confidence bound ``μ - κσ`` on a grid of the range (the paper's BO; the first
   candidate of a stage is the previous stage's lr, the first stage's the geometric middle of the range);
4. after k candidates, restore the snapshot and train the stage's ``stage_steps`` (τ) steps with the
   candidate of lowest forecast (the reference code's choice).

After each stage τ and τ' double until τ reaches ``max_stage_steps`` (reference: τ' = τ/10, k = 10, τ doubling;
defaults here are smaller for small workloads: k = 5, τ' = 20, τ = 200). The search steps are real optimizer
steps and count as training time (and as steps of the trainer's step budget): on a time-to-target bench the
method pays for its search. Evaluations during a search see the weights of the candidate being explored.

The wrapper owns the learning rate: before each base step it sets group ``i``'s lr to AutoLRS's lr times
``lr_i / lr_0`` (the groups' lrs as last set from outside, relative to the first group's initial lr). With
``schedule=constant`` (the intended use) that keeps the ratios between groups' initial lrs; a schedule's
multiplier, or an lr changed by hand between steps, multiplies AutoLRS's lr. The trainer's lr column shows the
lr of the last step taken (:meth:`AutoLRS.current_lr`); :attr:`AutoLRS.history` has the chosen lrs. Units: lr_min/lr_max are learning
rates of the base optimizer (defaults 1e-4..1e-1, for Adam-type bases); steps are optimizer steps.

Without loss feedback (``observe_loss`` never called, e.g. a hand-written loop) no search is possible: after the
first window AutoLRS warns once and steps the base optimizer at the group lrs as given.

Checkpoints: ``state_dict`` is the base's plus an ``autolrs`` entry with the whole search state (the snapshot
of weights and base state included: one extra copy of each), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.wrappers import GradientTransformWrapper

# ---------------------------------------------------------------------------------------------- the GP


class GaussianProcess:
    """A 1-D Gaussian-process regressor: zero-mean prior on standardised targets, squared-exponential kernel.

    ``k(x, x') = exp(-(x - x')² / (2ℓ²))`` plus ``noise`` on the diagonal (of the standardised targets). The
    length scale ℓ is the one of ``length_scales`` with the highest log marginal likelihood. Inputs are
    whatever 1-D coordinates the caller uses (AutoLRS: log lr scaled to [0, 1]).
    """

    def __init__(self, length_scales: Sequence[float] = (0.15, 0.3, 0.6), noise: float = 1e-3) -> None:
        self.length_scales = tuple(length_scales)
        self.noise = noise
        self.x = np.zeros(0)
        self.length = self.length_scales[0]

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
        return np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / length**2)

    def fit(self, x: ArrayLike, y: ArrayLike) -> GaussianProcess:
        self.x = np.asarray(x, dtype=float)
        ys = np.asarray(y, dtype=float)
        if self.x.ndim != 1 or self.x.shape != ys.shape or len(ys) == 0:
            raise ValueError("x and y must be 1-D sequences of the same, non-zero length")
        self.mean = float(ys.mean())
        self.scale = float(ys.std()) or 1.0
        z = (ys - self.mean) / self.scale
        best = None
        for length in self.length_scales:
            k = self._kernel(self.x, self.x, length) + self.noise * np.eye(len(z))
            chol = np.linalg.cholesky(k)
            alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, z))
            loglik = -0.5 * z @ alpha - np.log(np.diag(chol)).sum()
            if best is None or loglik > best[0]:
                best = (loglik, length, chol, alpha)
        assert best is not None
        _, self.length, self._chol, self._alpha = best
        return self

    def predict(self, xs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at ``xs`` (in the targets' units)."""
        points = np.asarray(xs, dtype=float)
        ks = self._kernel(points, self.x, self.length)
        mu = ks @ self._alpha
        v = np.linalg.solve(self._chol, ks.T)
        var = np.clip(1.0 - (v * v).sum(axis=0), 0.0, None)
        return self.mean + self.scale * mu, self.scale * np.sqrt(var)


def lcb_next(gp: GaussianProcess, tried: Sequence[float], kappa: float, grid: int = 257) -> float:
    """The point of ``[0, 1]`` minimising ``μ - κσ``, away from the ``tried`` points (half a grid cell)."""
    xs = np.linspace(0.0, 1.0, grid)
    mu, sd = gp.predict(xs)
    score = mu - kappa * sd
    if len(tried):
        near = np.abs(xs[:, None] - np.asarray(tried)[None, :]).min(axis=1) < 0.5 / (grid - 1)
        score[near] = np.inf
    if not np.isfinite(score).any():
        return float(xs[len(xs) // 2])
    return float(xs[int(np.argmin(score))])


# -------------------------------------------------------------------------------------- the forecast


def exp_forecast(losses: ArrayLike, at: float, *, b_bounds: tuple[float, float] | None = None) -> float:
    """Fit ``a·exp(-b·t) + c`` to ``losses`` at t = 0, 1, ... and return the fit at ``t = at``.

    ``b`` is searched (golden section on log b) within ``b_bounds`` (default ``[1/at, 1]`` per step: the curve
    flattens within the horizon, never a straight line extrapolated over it); ``a`` and ``c`` are the least
    squares solution for each ``b``. Non-finite losses give ``inf``.
    """
    y = np.asarray(losses, dtype=float)
    if len(y) < 3 or not np.isfinite(y).all():
        return math.inf
    t = np.arange(len(y), dtype=float)
    lo, hi = b_bounds or (1.0 / max(at, 1.0), 1.0)
    lo, hi = math.log(lo), math.log(hi)

    def solve(log_b: float) -> tuple[float, np.ndarray]:
        design = np.stack([np.exp(-math.exp(log_b) * t), np.ones_like(t)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = design @ coef - y
        return float(resid @ resid), coef

    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = solve(c)[0], solve(d)[0]
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = solve(c)[0]
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = solve(d)[0]
    log_b = (a + b) / 2
    _, (amp, offset) = solve(log_b)
    value = float(amp * math.exp(-math.exp(log_b) * at) + offset)
    return value if math.isfinite(value) else math.inf


def forecast_window(losses: ArrayLike, at: float) -> float:
    """AutoLRS's loss forecast ``at`` steps after the start of a tried lr's window of per-step ``losses``.

    Two guards make :func:`exp_forecast` usable on short windows of noisy mini-batch losses:

    - *instability* (after the reference code's rule that a loss above the stage's initial loss is forecast
      as the current loss): when a 3-step moving average of the window rises above the mean of its first 3
      losses, the forecast is the current loss (mean of the last 10% of the window), not an extrapolation;
    - *flattening on the window's time scale*: b >= 1/len(losses) (a deviation from the reference code, whose
      b is unbounded): with b down to 1/at the fit extrapolated the near-linear decrease of small learning
      rates 6-7x beyond the window, and on charlm AutoLRS then chose lr 1e-4 and 2.4e-4 (validation loss 2.68
      after 900 steps; with both guards: 1.45e-3 twice and 2.41; benchmarks/studies.md).

    Non-finite losses give ``inf``.
    """
    y = np.asarray(losses, dtype=float)
    if len(y) < 3 or not np.isfinite(y).all():
        return math.inf
    current = float(y[-max(1, len(y) // 10):].mean())
    smooth = np.convolve(y, np.ones(3) / 3, mode="valid")
    if smooth.max() > y[:3].mean():
        return current
    return exp_forecast(y, at, b_bounds=(1.0 / len(y), 1.0))


# ----------------------------------------------------------------------------------------- the wrapper


class AutoLRS(GradientTransformWrapper):
    """AutoLRS (Jin et al. 2021): per-stage lr chosen by GP Bayesian optimisation over short, rolled-back trials.

    Args:
        params: tensors or param-group dicts (passed to the base).
        base: registry name or class of the base optimizer (default ``"adamw"``); its ``lr`` option only sets the
            ratios between param groups (AutoLRS sets the lr itself, a float each step: a tensor lr is refused).
        lr_min, lr_max: the search range (learning rates; default 1e-4 .. 1e-1), searched in log space.
        candidates: learning rates tried per stage (k; default 5; reference 10).
        explore_steps: steps per tried lr in the first stage (τ'; default 20).
        stage_steps: steps trained with the chosen lr in the first stage (τ; default 200; reference 10·τ').
        max_stage_steps: τ and τ' double after each stage while τ stays <= this (default 1600).
        kappa: the exploration weight κ of the lower confidence bound μ - κσ (default 1.0).
        **base_options: the base optimizer's options (``betas``, ``weight_decay``, ...).
    """

    def __init__(self, params: Iterable[Any], base: str | type[torch.optim.Optimizer] = "adamw", *,
                 lr_min: float = 1e-4, lr_max: float = 1e-1, candidates: int = 5, explore_steps: int = 20,
                 stage_steps: int = 200, max_stage_steps: int = 1600, kappa: float = 1.0, **base_options: Any) -> None:
        if not 0 < lr_min < lr_max:
            raise ValueError(f"AutoLRS needs 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
        if candidates < 1 or explore_steps < 3 or stage_steps < 1:
            raise ValueError("AutoLRS needs candidates >= 1, explore_steps >= 3 and stage_steps >= 1")
        if isinstance(base_options.get("lr"), Tensor):  # it would be replaced by a float at the first step
            raise ValueError("AutoLRS sets the learning rate itself (a float each step); give the base a float lr")
        super().__init__(params, base, **base_options)
        self.lr_min, self.lr_max = float(lr_min), float(lr_max)
        self.candidates, self.kappa = int(candidates), float(kappa)
        self.explore_steps, self.stage_steps, self.max_stage_steps = int(explore_steps), int(stage_steps), int(max_stage_steps)
        self._initial = [float(g["lr"]) or 1.0 for g in self.param_groups]
        self._external = list(self._initial)  # the group lrs as last set from outside (the trainer's schedule)
        self._written: list[float | None] = [None] * len(self.param_groups)
        self.blind = False  # no observe_loss: no search, the base steps at the group lrs as given
        self.stage = 0
        self.phase = "explore"
        self.lr = math.exp((math.log(self.lr_min) + math.log(self.lr_max)) / 2)
        self.history: list[dict[str, Any]] = []  # one entry per stage: tried lrs, forecasts, chosen lr
        self._start_stage = True
        self._pending = False  # a window is full: close it at the next observe_loss (or step)
        self._window: list[Tensor | float] = []
        self._steps_in_window = 0
        self._tried: list[tuple[float, float]] = []  # (lr, forecast) of this stage
        self._snapshot: tuple[list[Tensor], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ the trainer's hooks
    def current_lr(self) -> float:
        """The first group's lr of the last step taken (what the trainer's lr column shows for this optimizer);
        before the first step, the group's lr as given."""
        written = self._written[0]
        return float(self.param_groups[0]["lr"] if written is None else written)

    def observe_loss(self, loss: Tensor | float) -> None:
        """The training loss of the step just taken (the trainer calls this after every step, before the next
        forward pass: a finished window is closed here, so the next step's gradient is taken at the restored
        weights)."""
        self._window.append(loss.detach() if isinstance(loss, Tensor) else float(loss))
        if self._pending:
            self._finish_window()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending:  # no observe_loss since the window's last step: close it without that loss
            self._finish_window()
        if self._start_stage:
            self._begin_stage()
        for i, group in enumerate(self.param_groups):
            if group["lr"] != self._written[i]:  # set from outside since our last write: a schedule's value
                self._external[i] = float(group["lr"])
            # AutoLRS's lr for the first group, times the group's initial ratio, times the schedule's multiplier
            group["lr"] = self._written[i] = (self._external[i] if self.blind else
                                              self.lr * self._external[i] / self._initial[0])
        self.optimizer.step()
        if not self.blind:
            self._steps_in_window += 1
            limit = self.explore_steps if self.phase == "explore" else self.stage_steps
            self._pending = self._steps_in_window >= limit
        return loss

    # ------------------------------------------------------------------ the search
    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def take_snapshot(self) -> None:
        self._snapshot = ([p.detach().clone() for p in self._params()], copy.deepcopy(self.optimizer.state_dict()))

    @torch.no_grad()
    def restore_snapshot(self) -> None:
        assert self._snapshot is not None
        tensors, state = self._snapshot
        for p, saved in zip(self._params(), tensors):
            p.copy_(saved)
        lrs = [g["lr"] for g in self.param_groups]
        self.optimizer.load_state_dict(copy.deepcopy(state))
        for group, lr in zip(self.param_groups, lrs):  # the lrs are AutoLRS's and the schedule's, not the snapshot's
            group["lr"] = lr

    def _x(self, lr: float) -> float:
        return (math.log(lr) - math.log(self.lr_min)) / (math.log(self.lr_max) - math.log(self.lr_min))

    def _lr(self, x: float) -> float:
        return math.exp(math.log(self.lr_min) + x * (math.log(self.lr_max) - math.log(self.lr_min)))

    def _window_losses(self) -> list[float]:
        tensors = [v for v in self._window if isinstance(v, Tensor)]
        values = torch.stack([t.float().reshape(()) for t in tensors]).tolist() if tensors else []
        it = iter(values)
        return [next(it) if isinstance(v, Tensor) else float(v) for v in self._window]

    def next_candidate(self) -> float:
        """The next lr to try this stage: the previous stage's lr first, then the GP's lower confidence bound."""
        if not self._tried:
            return min(max(self.lr, self.lr_min), self.lr_max)
        xs = [self._x(lr) for lr, _ in self._tried]
        ys = np.array([f for _, f in self._tried], dtype=float)
        finite = ys[np.isfinite(ys)]
        if len(finite) == 0:  # every try diverged: go lower than the lowest so far
            return max(self.lr_min, min(lr for lr, _ in self._tried) / 10)
        spread = float(finite.max() - finite.min()) or 1.0
        ys = np.where(np.isfinite(ys), ys, finite.max() + spread)  # diverged: worse than any finite forecast
        gp = GaussianProcess().fit(xs, ys)
        return self._lr(lcb_next(gp, xs, self.kappa))

    def _begin_stage(self) -> None:
        """Snapshot the weights and the base's state (taken before the stage's first update) and pick the first lr."""
        self._start_stage = False
        self.take_snapshot()
        self._tried = []
        self.phase = "explore"
        self.lr = self.next_candidate()
        self._reset_window()

    def _finish_window(self) -> None:
        """Close a tried lr's window (forecast, roll back, next lr or the stage's choice) or the stage."""
        self._pending = False
        if self.phase == "explore":
            losses = self._window_losses()
            if not losses and not self._tried:  # nobody calls observe_loss: searching is impossible
                import warnings

                warnings.warn("AutoLRS saw no training loss (observe_loss is never called): it steps the base "
                              "optimizer at the group lrs as given, without searching", RuntimeWarning, stacklevel=3)
                self.blind, self._snapshot = True, None
                self._reset_window()
                return
            forecast = forecast_window(losses[-self.explore_steps:], at=self.stage_steps) \
                if len(losses) >= self.explore_steps else math.inf
            self._tried.append((self.lr, forecast))
            self.restore_snapshot()
            if len(self._tried) < self.candidates:
                self.lr = self.next_candidate()
            else:
                finite = [(f, lr) for lr, f in self._tried if math.isfinite(f)]
                self.lr = min(finite)[1] if finite else max(self.lr_min, min(lr for lr, _ in self._tried) / 10)
                self.phase = "exploit"
                self.history.append({"stage": self.stage, "explore_steps": self.explore_steps,
                                     "stage_steps": self.stage_steps, "tried": [list(t) for t in self._tried],
                                     "lr": self.lr})
            self._reset_window()
        else:
            self.stage += 1
            if self.stage_steps * 2 <= self.max_stage_steps:
                self.stage_steps *= 2
                self.explore_steps *= 2
            self._start_stage = True  # the snapshot is taken at the next step, before its update

    def _reset_window(self) -> None:
        self._window = []
        self._steps_in_window = 0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base's state dict plus an ``autolrs`` entry with the whole search state (snapshot included), so
        a resumed run continues the stage exactly where it stopped."""
        out = dict(self.optimizer.state_dict())
        snapshot = None
        if self._snapshot is not None:
            snapshot = {"params": [t.clone() for t in self._snapshot[0]], "optimizer": copy.deepcopy(self._snapshot[1])}
        out["autolrs"] = {
            "stage": self.stage, "phase": self.phase, "lr": self.lr, "explore_steps": self.explore_steps,
            "stage_steps": self.stage_steps, "history": copy.deepcopy(self.history), "start_stage": self._start_stage,
            "pending": self._pending, "window": self._window_losses(), "steps_in_window": self._steps_in_window,
            "tried": [list(t) for t in self._tried], "snapshot": snapshot, "external": list(self._external),
            "written": list(self._written), "blind": self.blind,
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        mine = state_dict.pop("autolrs", None)
        self.optimizer.load_state_dict(state_dict)
        if not mine:
            return
        self.stage, self.phase, self.lr = int(mine["stage"]), str(mine["phase"]), float(mine["lr"])
        self.explore_steps, self.stage_steps = int(mine["explore_steps"]), int(mine["stage_steps"])
        self.history = copy.deepcopy(list(mine["history"]))
        self._start_stage, self._pending = bool(mine["start_stage"]), bool(mine["pending"])
        self._window = [float(v) for v in mine["window"]]
        self._steps_in_window = int(mine["steps_in_window"])
        self._tried = [(float(lr), float(f)) for lr, f in mine["tried"]]
        snap = mine["snapshot"]
        self._snapshot = None if snap is None else (
            [t.detach().clone().to(p.device) for t, p in zip(snap["params"], self._params())],
            copy.deepcopy(snap["optimizer"]))
        self._external = [float(v) for v in mine["external"]]
        self._written = [None if v is None else float(v) for v in mine["written"]]
        self.blind = bool(mine["blind"])


@dataclass(frozen=True)
class AutoLRSOptions:
    base: str = option("adamw", help="registry name of the base optimizer whose lr AutoLRS sets (its options follow)")
    lr_min: float = option(1e-4, gt=0, help="lowest learning rate searched (log space)")
    lr_max: float = option(1e-1, gt=0, help="highest learning rate searched (log space)")
    candidates: int = option(5, ge=1, help="learning rates tried per stage (k; the paper's code: 10)")
    explore_steps: int = option(20, ge=3, help="steps per tried lr in the first stage (tau'); doubles with tau")
    stage_steps: int = option(200, ge=1, help="steps trained with the chosen lr in the first stage (tau)")
    max_stage_steps: int = option(1600, ge=1, help="tau and tau' double after each stage while tau <= this")
    kappa: float = option(1.0, ge=0, help="exploration weight of the GP's lower confidence bound mu - kappa*sigma")


OPTIMIZERS.add("autolrs", AutoLRS, options=AutoLRSOptions,
               summary="AutoLRS: per-stage lr by GP Bayesian optimisation over short rolled-back trials (self-tuning)",
               source="trainlab", own=True, wrapper=True,
               paper="Jin et al. 2021, AutoLRS: Automatic Learning-Rate Schedule by Bayesian Optimization on the Fly")
