"""Interval bound propagation (IBP): sound bounds on a network's outputs over an L∞ ball, and the verified error.

Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models".
For inputs ``x'`` with ``‖x' − x‖∞ ≤ ε`` (intersected with the data box ``bounds`` when given), a box -- centre
``μ`` and radius ``r ≥ 0``, i.e. ``[l, u] = [μ − r, μ + r]`` elementwise -- is pushed through the layers:

    Linear, Conv1d/2d      μ' = Wμ + b,  r' = |W|·r                          (exact for one layer)
    Flatten, global mean   the same linear map on μ and r (its coefficients are ≥ 0)
    BatchNorm              s = γ/√(σ² + ϵ):  μ' = s(μ − m) + β,  r' = |s|·r   (per channel)
    ReLU, Tanh, Identity   l' = f(l),  u' = f(u)                              (monotone)
    GELU, SiLU, x²         l' = f(clip(x*, l, u)),  u' = max(f(l), f(u))      (falls then rises around x*)
    MaxPool                l' = pool(l),  u' = pool(u)                        (monotone in every input)
    Dropout (eval, or p=0) the identity

so every output of every ``x'`` in the ball lies in the final box. The activation rules are exact per unit;
the looseness of IBP comes from treating units independently.

**BatchNorm.** In eval mode (and for a BatchNorm without running statistics, as PyTorch does) ``m, σ²`` are the
running statistics. In train mode they are the statistics of the *clean* batch -- its mean and biased variance,
what BatchNorm normalises with -- as auto_LiRPA does and so Shi et al. 2021 ("Fast Certified Robust Training
with Short Warmup") train: the bounds then hold for the network as the clean batch fixed it, every perturbed
input normalised with the clean batch's statistics. Gradients flow through those statistics. The clean forward
pass that :func:`propagate` runs beside the bounds updates the running statistics once, as a training step does.

**Ghost BatchNorm and dropout** (``model.ghost_batch``, ``model.dropout``). In eval mode a
:class:`~trainlab.models.norm.GhostBatchNorm1d`/``2d`` with running statistics is BatchNorm and takes its rule,
and dropout is the identity. In training mode a ghost BatchNorm normalises each ghost batch with its own
statistics and dropout multiplies by a random mask: the clean forward is then not the one fixed network the box
is bounded for, so :func:`propagate` refuses both (a Dropout with ``p > 0``; a ghost BatchNorm in training mode,
or without running statistics) with a one-line ``ValueError`` naming the layer, before running anything;
:func:`check_trainable` raises the same for a model in any mode, for certified training to refuse it when built.
Certified training therefore needs ``model.dropout=0`` and ``model.ghost_batch=0``; verified errors of such
models (eval mode) are fine.

**Margins and the verified error.** The logit bounds alone bound ``z_y − z_j`` by ``l_y − u_j``; folding the
differences into the last Linear layer (``(W_y − W_j)·h + b_y − b_j`` bounded from the box of ``h``, Gowal et
al.'s specification matrix C) is tighter and is what :meth:`Propagation.margin_lower` returns. An example is
certified at ε when every lower bound of ``z_y − z_j``, ``j ≠ y``, is > 0; the verified error is the fraction
that is not (a tie counts as not certified, so the verified error is never below the clean error).

Models: trainlab's ``mlp`` (:class:`~trainlab.models.mlp.MLP`), ``cnn1d``/``cnn2d``
(:class:`~trainlab.models.cnn.ConvNet`) and any ``nn.Sequential`` of the layers above; layers are matched by
exact type, so a subclass with another forward (σReparam's Linear) is refused rather than bounded wrongly, as
are other models (the transformer), wrappers (``param.output_scale``, ``torch.compile``: pass the inner model)
and integer (token) inputs, each with a one-line ``ValueError``.

Units: ``eps`` and ``bounds`` are in the units of the model's inputs (trainlab's inputs are standardised, see
:mod:`trainlab.robust.attacks`); ``eps`` may be a tensor broadcastable to ``x`` (a radius per channel).

COST: one clean forward plus two passes per layer (centre and radius), about 3 forwards; the margin bounds
materialise a ``(batch, classes, features)`` tensor at the last layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainlab.models.cnn import ConvNet
from trainlab.models.layers import Quadratic
from trainlab.models.mlp import MLP
from trainlab.models.norm import GhostBatchNorm1d, GhostBatchNorm2d

Bounds = tuple[float | Tensor, float | Tensor]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# BatchNorm in eval mode with running statistics; per-ghost-batch statistics (training) have no rule here
_GHOST_BATCHNORM = (GhostBatchNorm1d, GhostBatchNorm2d)
# the identity in eval mode (and at p = 0); a random mask in training has no rule here
_DROPOUT = (nn.Dropout,)
_MONOTONE = (nn.ReLU, nn.Tanh)
# the minimiser x* of activations that fall then rise (f' < 0 left of x*, > 0 right of it); GELU's and SiLU's
# are the roots of Φ(x) + xφ(x) and σ(x)(1 + x(1 − σ(x))), found by Newton's method in float64
_MINIMISER: dict[type[nn.Module], float] = {nn.GELU: -0.7517915246935645, nn.SiLU: -1.278464542761074,
                                             Quadratic: 0.0}
_ACTIVATIONS = (*_MONOTONE, *_MINIMISER)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d)


class _GlobalMean(nn.Module):
    """The global average pool of :meth:`ConvNet.features`: the mean over all positions (dims 2, 3, ...)."""

    def forward(self, h: Tensor) -> Tensor:
        return h.mean(dim=tuple(range(2, h.dim())))


_POSITIVE_LINEAR = (nn.Flatten, nn.Identity, _GlobalMean)


@dataclass
class Box:
    """An elementwise interval ``[mid − rad, mid + rad]`` (``rad ≥ 0``)."""

    mid: Tensor
    rad: Tensor

    @property
    def lower(self) -> Tensor:
        return self.mid - self.rad

    @property
    def upper(self) -> Tensor:
        return self.mid + self.rad

    @classmethod
    def from_bounds(cls, lower: Tensor, upper: Tensor) -> Box:
        return cls((upper + lower) / 2, (upper - lower) / 2)


@dataclass
class Propagation:
    """What one propagation through a model gives.

    Attributes:
        logits: the model's output on the clean inputs (the same forward pass a training step runs).
        last: the box at the input of the output Linear layer ``head`` (the box of the outputs when the model
            does not end with a Linear layer; ``head`` is then None).
        head: the output Linear layer, whose rows the margins fold in.
        preactivations: ``(lower, upper)`` at the input of every nonlinear activation layer, in order (Shi et
            al.'s pre-ReLU bounds, read by their regularisers).
        input_radius: the mean radius of the input box, ``r̄₀`` (after intersecting with the data box).
    """

    logits: Tensor
    last: Box
    head: nn.Linear | None
    preactivations: list[tuple[Tensor, Tensor]]
    input_radius: Tensor

    def logit_bounds(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` elementwise bounds of the outputs."""
        box = self.last if self.head is None else _affine(self.head, self.last)
        return box.lower, box.upper

    def margin_lower(self, y: Tensor) -> Tensor:
        """``(batch, classes)`` lower bounds of ``z_y − z_j`` over the ball (0 at ``j = y``), ``y`` class indices.

        With a Linear output layer the differences are folded into it (tighter than ``l_y − u_j``); the
        ``(batch, classes, features)`` matrix of row differences is built for that.
        """
        if self.head is None or self.last.mid.dim() != 2:
            lower, upper = self.logit_bounds()
            return (lower.gather(1, y[:, None]) - upper).scatter(1, y[:, None], 0.0)
        w, b = self.head.weight, self.head.bias
        diff = w[y][:, None, :] - w[None, :, :]  # row j of example i: W_{y_i} − W_j
        centre = torch.einsum("bkd,bd->bk", diff, self.last.mid)
        if b is not None:
            centre = centre + (b[y][:, None] - b[None, :])
        return centre - torch.einsum("bkd,bd->bk", diff.abs(), self.last.rad)


def propagate(model: nn.Module, x: Tensor, eps: float | Tensor, bounds: Bounds | None = None) -> Propagation:
    """Clean outputs and interval bounds of ``model`` over ``{x' : ‖x' − x‖∞ ≤ eps} ∩ bounds`` (module doc).

    Args:
        model: an ``mlp``/``cnn1d``/``cnn2d`` model or an ``nn.Sequential`` of supported layers, in the mode
            whose BatchNorm rule is wanted (train: clean-batch statistics; eval: running statistics).
        x: ``(batch, ...)`` real-valued inputs, inside ``bounds``.
        eps: the L∞ radius ≥ 0 in input units (a float, or a tensor broadcastable to ``x``).
        bounds: ``(low, high)`` data box (floats or tensors broadcastable to ``x``), or None for none.

    Raises ``ValueError`` (one line) for a model, layer or input it cannot bound, and for a Dropout (p > 0) or
    ghost BatchNorm in training mode (module doc), before running anything.
    """
    layers = _layers(model)
    _refuse_random_layers(layers)
    if not x.is_floating_point():
        raise ValueError(f"ibp: needs real-valued inputs, got {x.dtype} (integer token ids have no L∞ ball)")
    radius = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(radius).all()) or bool((radius < 0).any()):
        raise ValueError(f"ibp: eps must be finite and >= 0, got {eps!r}")
    lower, upper = x - radius, x + radius
    if bounds is not None:
        low, high = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in bounds)
        if bool((x < low).any()) or bool((x > high).any()):
            raise ValueError("ibp: the inputs lie outside bounds; the data box must contain them")
        lower, upper = torch.maximum(lower, low), torch.minimum(upper, high)
    box = Box.from_bounds(lower, upper) if bounds is not None else Box(x, radius.expand_as(x))
    clean = x
    if isinstance(model, ConvNet) and x.dim() == model.dims + 1:  # ConvNet.features adds the channel axis
        clean, box = clean.unsqueeze(1), Box(box.mid.unsqueeze(1), box.rad.unsqueeze(1))
    input_radius = box.rad.mean()
    preactivations: list[tuple[Tensor, Tensor]] = []
    last = layers[-1][1]
    head = last if isinstance(last, nn.Linear) and type(last) is nn.Linear else None
    for name, layer in layers[:-1] if head is not None else layers:
        if isinstance(layer, _ACTIVATIONS):
            preactivations.append((box.lower, box.upper))
        box = _propagate_layer(name, layer, clean, box)
        clean = layer(clean)
    logits = clean if head is None else head(clean)
    return Propagation(logits, box, head, preactivations, input_radius)


def ibp_bounds(model: nn.Module, x: Tensor, eps: float | Tensor,
               bounds: Bounds | None = None) -> tuple[Tensor, Tensor]:
    """``(lower, upper)`` bounds of the logits of every input within ``eps`` (L∞) of ``x`` and inside ``bounds``.

    The model's current mode decides the BatchNorm statistics (module doc); see :func:`propagate` for the
    arguments. COST: about 3 forward passes.
    """
    return propagate(model, x, eps, bounds).logit_bounds()


@torch.no_grad()
def verified_error(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, bounds: Bounds | None = None, *,
                   batch_size: int = 1024) -> float:
    """Fraction of ``(x, y)`` that IBP does not certify at ``eps``: some lower bound of ``z_y − z_j`` (j ≠ y) ≤ 0.

    Gowal et al. 2018's verified error, an upper bound on the error under any attack within the ball (so it is
    at least the PGD error, which is at least the clean error). Evaluated in eval mode (BatchNorm running
    statistics; every submodule's mode restored after), without gradients, ``batch_size`` examples at a time.
    ``y``: class indices ``(batch,)``.
    """
    if y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"ibp: verified_error needs class indices (N,) for N={len(x)} inputs, got {y.dtype} "
                         f"of shape {tuple(y.shape)}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        failed = 0
        for start in range(0, len(x), batch_size):
            xs, ys = x[start:start + batch_size], y[start:start + batch_size]
            margins = propagate(model, xs, eps, bounds).margin_lower(ys)
            margins.scatter_(1, ys[:, None], math.inf)  # z_y − z_y = 0 is no threat
            failed += int((margins <= 0).any(dim=1).sum())
    finally:
        for m, training in modes:
            m.training = training
    return failed / max(len(x), 1)


# ------------------------------------------------------------------------------------------------ pieces


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as the sequence of (qualified name, layer) its forward pass applies."""
    if type(model) is MLP:
        return [*((f"body.{n}", m) for n, m in model.body.named_children()), ("head", model.head)]
    if type(model) is ConvNet:
        return [*((f"body.{n}", m) for n, m in model.body.named_children()), ("features", _GlobalMean()),
                ("head", model.head)]
    if type(model) is nn.Sequential and len(model) > 0:
        return list(model.named_children())
    raise ValueError(f"ibp: cannot bound a {type(model).__name__}; supported: mlp, cnn1d, cnn2d and nn.Sequential "
                     f"of Linear, Conv1d/2d, BatchNorm1d/2d, ReLU/Tanh/GELU/SiLU/x², MaxPool, Flatten, Dropout")


def check_trainable(model: nn.Module) -> None:
    """Raise the one-line ``ValueError`` that :func:`propagate` raises on ``model`` in training mode for its Dropout
    (p > 0) and ghost BatchNorm layers, whatever mode ``model`` is in now: for certified training to refuse such a
    model when it is built rather than at its first bounded step. The model kind and layer types are
    ``check_bounded``'s (:mod:`trainlab.robust.certified`) to check."""
    _refuse_random_layers(_layers(model), training=True)


def _refuse_random_layers(layers: list[tuple[str, nn.Module]], training: bool | None = None) -> None:
    """Refuse, before any forward pass moves a running statistic, the layers whose training-mode forward is not
    one fixed network: Dropout with p > 0 and ghost BatchNorm normalising with per-ghost-batch statistics.
    ``training``: the mode to judge them in (None: each layer's own)."""
    for name, layer in layers:
        mode = layer.training if training is None else training
        if type(layer) in _DROPOUT and isinstance(layer, nn.Dropout) and mode and layer.p > 0:
            raise ValueError(f"ibp: layer {name!r} is Dropout(p={layer.p}) in training mode, a random mask IBP "
                             f"cannot bound; use eval mode, or model.dropout=0 for certified training")
        if (type(layer) in _GHOST_BATCHNORM and isinstance(layer, _BatchNorm)
                and (mode or layer.running_mean is None)):
            raise ValueError(f"ibp: layer {name!r} is {type(layer).__name__} in training mode, whose per-ghost-batch "
                             f"statistics IBP does not model; use eval mode (running statistics), or "
                             f"model.ghost_batch=0 for certified training")


def _affine(layer: nn.Module, box: Box) -> Box:
    """``μ' = Wμ + b``, ``r' = |W|·r`` for a Linear or a convolution (its own padding, stride and groups)."""
    w = layer.get_parameter("weight")
    bias = layer.bias if isinstance(layer.bias, Tensor) else None
    if isinstance(layer, nn.Linear):
        return Box(F.linear(box.mid, w, bias), F.linear(box.rad, w.abs()))
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
    return Box(layer._conv_forward(box.mid, w, bias), layer._conv_forward(box.rad, w.abs(), None))


def _batchnorm(layer: _BatchNorm, clean: Tensor, box: Box) -> Box:
    """Per channel ``μ' = s(μ − m) + β``, ``r' = |s|·r``; ``m, σ²`` as BatchNorm itself would normalise ``clean``."""
    if layer.training or layer.running_mean is None or layer.running_var is None:
        dims = [0, *range(2, clean.dim())]
        mean, var = clean.mean(dim=dims), clean.var(dim=dims, correction=0)
    else:
        mean, var = layer.running_mean, layer.running_var
    scale = torch.rsqrt(var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    shift = -mean * scale if layer.bias is None else layer.bias - mean * scale
    shape = (1, -1, *[1] * (clean.dim() - 2))
    return Box(box.mid * scale.view(shape) + shift.view(shape), box.rad * scale.abs().view(shape))


def _propagate_layer(name: str, layer: nn.Module, clean: Tensor, box: Box) -> Box:
    """The box after ``layer`` (``clean``: the layer's clean input, for BatchNorm's batch statistics)."""
    kind = type(layer)
    if kind in _AFFINE:
        return _affine(layer, box)
    if kind in _POSITIVE_LINEAR:
        return Box(layer(box.mid), layer(box.rad))
    if kind in _BATCHNORM or kind in _GHOST_BATCHNORM:  # ghost: eval mode only (_refuse_random_layers)
        assert isinstance(layer, _BatchNorm)
        return _batchnorm(layer, clean, box)
    if kind in _DROPOUT:  # eval mode or p = 0 (_refuse_random_layers): the identity
        return box
    if kind in _MONOTONE or kind in _POOLS:
        return Box.from_bounds(layer(box.lower), layer(box.upper))
    if isinstance(layer, nn.GELU) and layer.approximate != "none":
        raise ValueError(f"ibp: layer {name!r} is GELU(approximate={layer.approximate!r}); only the exact GELU "
                         f"has its minimiser here")
    if kind in _MINIMISER:
        lower, upper = box.lower, box.upper
        bottom = torch.minimum(lower.clamp(min=_MINIMISER[kind]), upper)  # x* clipped into [l, u]
        return Box.from_bounds(layer(bottom), torch.maximum(layer(lower), layer(upper)))
    raise ValueError(f"ibp: no interval rule for layer {name!r} ({kind.__name__}); supported: Linear, Conv1d/2d, "
                     f"BatchNorm1d/2d, ReLU, Tanh, GELU, SiLU, x², MaxPool1d/2d, Flatten, Identity, Dropout (eval)")
