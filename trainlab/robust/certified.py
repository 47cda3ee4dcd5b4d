"""Certified (IBP) training: the cross-entropy of interval-bound worst-case margins, its ε warm-up and Shi et
al.'s warm-up regularisers.

Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models";
Shi, Wang, Zhang, Yi & Hsieh 2021, "Fast Certified Robust Training with Short Warmup" (code:
shizhouxing/Fast-Certified-Robust-Training, on auto_LiRPA). With ``m(x) = margin lower bounds`` of
:meth:`trainlab.robust.ibp.Propagation.margin_lower` (``m_j ≤ z_y − z_j`` over the ε_t-ball, ``m_y = 0``), the
per-example training loss at optimizer step ``t`` is::

    ε_t = 0:   CE(z(x), y)                                                  (clean training, no bounds)
    ε_t > 0:   κ_t · CE(z(x), y) + (1 − κ_t) · CE(−m(x), y)                 (Gowal et al.)

``CE(−m, y) = log Σ_j exp(−m_j)`` is the cross-entropy of the worst-case logits ``ẑ_j = −m_j ≥ z_j − z_y``
(Gowal et al.'s ẑ, with the specification matrix folded into the last layer). The batch penalty, while
``ε_t < ε`` (the warm-up, including the steps at ε_t = 0 before it) and ``λ > 0``, is Shi et al.'s::

    λ · (1 − ε_t/ε) · (L_tight + L_relu)                                     (Shi et al.; λ = 0.5)

and None afterwards. At ε_t = 0 the regularisers read bounds at the tiny radius ``REG_EPS = 1e-6`` (the
reference code's ``--min-eps-reg``: ``cert`` raises ε to it when the regulariser is on and the batch is
"natural"), while the loss stays the clean cross-entropy: Shi et al. regularise from the first step, before
ε grows, which is what makes their short warm-up work. With ``λ = 0`` the steps at ε_t = 0 compute no bounds.

**Schedules** (:func:`epsilon_at`, :func:`kappa_at`), with ``p = t − start`` the step within the ramp and
``W = warmup``: ε_t = 0 for ``p ≤ 0`` (and ``W > 0``), ``ε`` for ``p ≥ W``, and in between

    linear     ε·p/W                                                        (Gowal et al.)
    smoothed   α·p^β                                   for p < m,   m = ⌊W·0.25⌋, β = 4
               min(ε, ε_m + (ε − ε_m)·(p − m)/(W − m))  for p ≥ m,   ε_m = α·m^β,
               α = ε / (m^{β−1}·((W − m)·β + m))

the last being auto_LiRPA's ``SmoothedScheduler.step_batch`` (``auto_LiRPA/eps_scheduler.py``, after DeepMind's
interval-bound-propagation ``utils.py``, as its comment says): polynomial growth to the mid point, where its slope equals
that of the line on to ``(W, ε)``; with ``m = 0`` (W < 4) the line from 0. Step mapping: auto_LiRPA's
``init_step`` (its last step at ε = 0) is ``start`` here and its ``final_step`` (the first at full ε) is
``start + warmup``, so ε_t = 0 for the first ``start + 1`` steps when ``warmup > 0`` (the ramp's origin is a
step at ε = 0) and for the first ``start`` steps when ``warmup = 0``. κ_t follows ε_t:
``κ_t = 1 − (1 − κ)·ε_t/ε`` -- Gowal et al. ramp κ linearly from 1 to 0.5 over the ε ramp, which this is with a
linear ramp; Shi et al. use κ = 0 (pure IBP loss).

**Regularisers** (:func:`tightness_loss`, :func:`relu_balance_loss`; ``τ = TAU = 0.5``, the reference's
``--tol``), over the ``L`` activation layers' pre-activation bounds ``[l, u]``, centre ``c = (l + u)/2``, mean
radius ``r̄_l`` (over batch and units) and input mean radius ``r̄_0``::

    L_tight = (1/L) Σ_l ReLU(τ − r̄_0 / r̄_l) / τ
    L_relu  = (1/L) Σ_l Σ_{ρ ∈ {ρ_μ, ρ_v}} ReLU(τ − min(ρ, 1/ρ)) / τ
    ρ_μ = Σ c·1[l>0] / (−Σ c·1[u<0]),   ρ_v = Σ (c − c̄)²·1[l>0] / Σ (c − c̄)²·1[u<0],   c̄ the layer's mean of c

(``regularization.py``'s ``compute_reg``; its means over the tensor cancel in ρ_μ). ``min(ρ, 1/ρ)`` is
computed as ``min(a, b)/max(a, b)`` of the two sums: equal wherever ρ is finite and positive, 0 (the largest
penalty, 1) when exactly one side is empty, and a term with both sides empty is 0. The reference skips a
layer's whole L_relu when either ratio is NaN or ±inf (0/0, or x/0 depending on the sign of a zero), which
this replaces by the rule above; layers still count in 1/L as in the reference. The reference regularises
ReLU layers; here every activation layer that :func:`~trainlab.robust.ibp.propagate` records (ReLU, and
also Tanh/GELU/SiLU/x², where ``l > 0`` and ``u < 0`` are still the units of fixed sign). No activation layer
(a linear model): both are 0.

Units: ε is in the units of the model's inputs (trainlab's inputs are standardised; no data box), as in
:mod:`trainlab.robust.ibp`. BatchNorm: in training mode the bounds use the clean batch's statistics (ibp's
module doc), as auto_LiRPA and Shi et al. do.

COST per step with ε_t > 0 (or λ > 0 in the warm-up): one :func:`~trainlab.robust.ibp.propagate` -- about 3
forward passes (clean, centre, radius) and their backward -- in place of 1 forward + backward; at ε_t = 0
with λ = 0, the plain step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.config import ConfigError
from trainlab.robust import ibp

Ramp = Literal["smoothed", "linear"]
RAMPS: tuple[str, ...] = ("smoothed", "linear")

TAU = 0.5  # Shi et al.'s tolerance τ of both regularisers (reference --tol)
REG_EPS = 1e-6  # radius of the regularisers' bounds while ε_t = 0 (reference --min-eps-reg)
SMOOTH_MID = 0.25  # auto_LiRPA SmoothedScheduler's mid point: fraction of the ramp grown polynomially
SMOOTH_BETA = 4.0  # its exponent β (≥ 2)
_TINY = 1e-12  # the reference's clamp of a zero radius or ratio


def epsilon_at(step: int, eps: float, start: int = 0, warmup: int = 0, ramp: Ramp = "smoothed") -> float:
    """ε_t of 0-based optimizer ``step`` for final radius ``eps``: 0 up to ``start``, then ``ramp`` over ``warmup``
    steps (module doc: the exact formulas; auto_LiRPA's SmoothedScheduler for ``"smoothed"``), then ``eps``.

    ``warmup = 0``: ``eps`` from step ``start`` on. Returns exactly 0 before the ramp and exactly ``eps`` from
    step ``start + warmup`` on.
    """
    if ramp not in RAMPS:
        raise ValueError(f"certified: ramp must be one of {', '.join(RAMPS)}, got {ramp!r}")
    if eps < 0 or start < 0 or warmup < 0:
        raise ValueError(f"certified: eps, start and warmup must be >= 0, got {eps}, {start}, {warmup}")
    p = step - start
    if p >= warmup:
        return float(eps)
    if p <= 0:
        return 0.0
    mid = int(warmup * SMOOTH_MID)
    if ramp == "linear" or mid == 0:
        return eps * p / warmup
    beta = SMOOTH_BETA
    alpha = eps / (mid ** (beta - 1) * ((warmup - mid) * beta + mid))
    if p < mid:
        return alpha * p**beta
    at_mid = alpha * mid**beta
    return min(eps, at_mid + (eps - at_mid) * (p - mid) / (warmup - mid))


def kappa_at(eps_t: float, eps: float, kappa: float) -> float:
    """κ_t = 1 − (1 − κ)·ε_t/ε: the clean cross-entropy's weight, 1 at ε_t = 0 down to ``kappa`` at ε_t = ε."""
    if eps_t >= eps:
        return float(kappa)
    return 1.0 - (1.0 - kappa) * eps_t / eps


def certified_cross_entropy(logits: Tensor, margin_lower: Tensor, y: Tensor, kappa: float) -> Tensor:
    """Per-example ``κ·CE(logits, y) + (1 − κ)·CE(−margin_lower, y)`` (Gowal et al. 2018), in float32 or wider.

    ``margin_lower``: ``(N, classes)`` lower bounds of ``z_y − z_j`` (0 at ``j = y``); ``y``: ``(N,)`` indices.
    """
    robust = F.cross_entropy(-_wide(margin_lower), y, reduction="none")
    if kappa == 0:
        return robust
    return kappa * F.cross_entropy(_wide(logits), y, reduction="none") + (1 - kappa) * robust


def tightness_loss(preactivations: list[tuple[Tensor, Tensor]], input_radius: Tensor, tau: float = TAU) -> Tensor:
    """Shi et al.'s ``L_tight = (1/L) Σ_l ReLU(τ − r̄_0/r̄_l)/τ`` (module doc); 0 with no activation layer."""
    if not preactivations:
        return input_radius.new_zeros(())
    r0 = _wide(input_radius)
    terms = [F.relu(tau - r0 / ((_wide(upper) - _wide(lower)) / 2).mean().clamp(min=_TINY)) / tau
             for lower, upper in preactivations]
    return torch.stack(terms).mean()


def relu_balance_loss(preactivations: list[tuple[Tensor, Tensor]], tau: float = TAU) -> Tensor:
    """Shi et al.'s ``L_relu``: the balance of the stably active and inactive units' centre means and variances
    (module doc: formula, and the rule for an empty side); 0 with no activation layer."""
    if not preactivations:
        return torch.zeros(())
    terms = []
    for lower, upper in preactivations:
        lower, upper = _wide(lower), _wide(upper)
        centre = (upper + lower) / 2
        active, inactive = (lower > 0).to(centre.dtype), (upper < 0).to(centre.dtype)
        deviation = (centre - centre.mean()) ** 2
        terms.append(_imbalance((centre * active).sum(), -(centre * inactive).sum(), tau)
                     + _imbalance((deviation * active).sum(), (deviation * inactive).sum(), tau))
    return torch.stack(terms).mean()


def _wide(t: Tensor) -> Tensor:
    """``t`` in at least float32: under autocast the bounds may be half precision, too coarse for sums over a
    whole batch."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _imbalance(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """``ReLU(τ − min(ρ, 1/ρ))/τ`` for ``ρ = a/b``, ``a, b ≥ 0``, as ``min(a, b)/max(a, b)``; 0 when both are 0."""
    high = torch.maximum(a, b)
    ratio = torch.minimum(a, b) / high.clamp(min=_TINY)
    return torch.where(high > 0, F.relu(tau - ratio) / tau, torch.zeros_like(ratio))


def check_bounded(model: nn.Module) -> None:
    """Raise ibp's one-line ``ValueError`` when :func:`~trainlab.robust.ibp.propagate` cannot bound ``model``
    (checked on its structure, without running it: the model kind, then every layer's type).

    Mode-free, as its callers need (the ``certified`` probe checks a model in training mode, then bounds it in eval
    mode): Dropout and ghost BatchNorm pass, since eval mode bounds them; ``propagate`` refuses them in training
    mode, where they are random or use per-ghost-batch statistics."""
    supported = (*ibp._AFFINE, *ibp._POSITIVE_LINEAR, *ibp._BATCHNORM, *ibp._GHOST_BATCHNORM, *ibp._DROPOUT,
                 *ibp._MONOTONE, *ibp._POOLS, *ibp._MINIMISER)
    for name, layer in ibp._layers(model):
        if isinstance(layer, nn.GELU) and layer.approximate != "none":
            raise ValueError(f"ibp: layer {name!r} is GELU(approximate={layer.approximate!r}); only the exact GELU "
                             f"is supported")
        if type(layer) not in supported:
            raise ValueError(f"ibp: no interval rule for layer {name!r} ({type(layer).__name__}); supported: Linear, "
                             f"Conv1d/2d, BatchNorm1d/2d, ReLU, Tanh, GELU, SiLU, x², MaxPool1d/2d, Flatten, Identity, "
                             f"Dropout (eval)")


@dataclass
class CertifiedLoss:
    """The per-step certified training loss (module doc), for ``loss.certified=ibp``.

    Attributes:
        model: the (unwrapped) model the bounds are propagated through; it is what the optimizer trains.
        eps: the final radius ε > 0 in input units.
        start: steps at ε = 0 before the ramp. warmup: ramp steps (0: ε from ``start`` on).
        ramp: ``"smoothed"`` (Shi et al. / auto_LiRPA, default) or ``"linear"`` (Gowal et al.).
        kappa: final weight κ of the clean cross-entropy (default 0, Shi et al.; Gowal et al. 0.5).
        reg: λ of the warm-up regularisers (default 0.5, Shi et al.; 0: off).
        bounds: optional data box for the inputs (None: trainlab's standardised inputs have none).
    """

    model: nn.Module
    eps: float
    start: int = 0
    warmup: int = 0
    ramp: Ramp = "smoothed"
    kappa: float = 0.0
    reg: float = 0.5
    bounds: ibp.Bounds | None = None

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"certified: eps must be > 0, got {self.eps}")
        if not 0 <= self.kappa <= 1:
            raise ValueError(f"certified: kappa must be in [0, 1], got {self.kappa}")
        if self.reg < 0:
            raise ValueError(f"certified: reg must be >= 0, got {self.reg}")
        check_bounded(self.model)

    @classmethod
    def from_options(cls, options: Any, model: nn.Module) -> CertifiedLoss:
        """From ``loss.certified_*`` (:class:`trainlab.train.config.LossOptions`); ``model`` unwrapped (not
        compiled). Raises ``ConfigError("loss.certified", ...)`` when IBP cannot bound ``model``."""
        try:
            check_bounded(model)
            ibp.check_trainable(model)  # dropout and ghost batch norm: refused now, not at the first bounded step
        except ValueError as err:
            from trainlab.models.parametrization import OutputScaled

            hint = "; set param.output_scale=1" if isinstance(model, OutputScaled) else ""
            raise ConfigError("loss.certified", str(err).splitlines()[0] + hint) from None
        if options.certified_eps is None:
            raise ConfigError("loss.certified_eps", "give the certified radius in input units, e.g. "
                                                    "loss.certified_eps=0.1")
        return cls(model, float(options.certified_eps), start=options.certified_start,
                   warmup=options.certified_warmup, ramp=options.certified_ramp, kappa=options.certified_kappa,
                   reg=options.certified_reg)

    def epsilon(self, step: int) -> float:
        """ε_t at 0-based optimizer ``step`` (:func:`epsilon_at`)."""
        return epsilon_at(step, self.eps, self.start, self.warmup, self.ramp)

    def reg_weight(self, step: int) -> float:
        """``λ·(1 − ε_t/ε)`` during the warm-up (ε_t < ε), else 0."""
        eps_t = self.epsilon(step)
        return self.reg * (1.0 - eps_t / self.eps) if eps_t < self.eps else 0.0

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor | None]:
        """(per-example losses ``(N,)``, batch penalty or None) at optimizer ``step`` for inputs ``x`` and class
        indices ``y``. ``net`` (possibly compiled) runs the clean forward of the steps that need no bounds; the
        bounds go through ``self.model``, in its current mode."""
        if y.is_floating_point() or y.dim() != 1:
            raise ValueError(f"certified: needs one class index per example, got {y.dtype} of shape "
                             f"{tuple(y.shape)}")
        eps_t, weight = self.epsilon(step), self.reg_weight(step)
        if eps_t == 0 and weight == 0:
            return F.cross_entropy(_wide(net(x)), y, reduction="none"), None
        prop = ibp.propagate(self.model, x, eps_t if eps_t > 0 else REG_EPS, self.bounds)
        if eps_t == 0:  # warm-up before the ramp: clean loss; the bounds are only for the regularisers
            losses = F.cross_entropy(_wide(prop.logits), y, reduction="none")
        else:
            kappa = kappa_at(eps_t, self.eps, self.kappa)
            losses = certified_cross_entropy(prop.logits, prop.margin_lower(y), y, kappa)
        penalty = None
        if weight > 0:
            penalty = weight * (tightness_loss(prop.preactivations, prop.input_radius)
                                + relu_balance_loss(prop.preactivations).to(prop.input_radius.device))
        return losses, penalty
