"""Adversarial attacks as plain functions: FGSM and PGD (L∞ and L2) with random restarts.

FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples". PGD: Madry, Makelov,
Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks". The arithmetic
follows torchattacks v3 (``FGSM``, ``PGD``, ``PGDL2``; Harry24k/adversarial-attacks-pytorch) step for step, so
that with the same random start both give the same adversarial inputs (``tests/robust/test_attacks.py``).

With ``g = ∇_x' L(f(x'), y)`` the gradient of each example's own loss at the current point ``x'`` and
``δ = x' − x``::

    FGSM         x' = Π_box(x + ε·sign g(x))
    PGD start    L∞: δ0 ~ U(−ε, ε) per coordinate;   L2: δ0 = ε·u·z/‖z‖₂, z ~ N(0, I), u ~ U(0, 1) per example
                 then x' = Π_box(x + δ0)                                  (random_start=False: x' = x)
    PGD step     L∞: x' ← x' + α·sign g;              L2: x' ← x' + α·g/‖g‖₂
    projection   L∞: δ ← clamp(δ, −ε, ε);             L2: δ ← δ·min(1, ε/‖δ‖₂);     then x' ← Π_box(x + δ)
    restarts     R random starts; each example keeps the final iterate of the start that misclassifies it,
                 or, among equals, has the highest loss (the per-example worst case of Madry et al.'s evaluation)

PGD returns the last iterate of each start (as torchattacks and Madry et al.), not the best point on the way.
Norms are over all of an example's coordinates (the flattened input). The box step clamps each coordinate
into ``bounds``; because ``x`` lies in the box, that never moves a coordinate farther from ``x``, so the
result stays in the ε-ball. For L∞ the two clamps are the exact projection onto ball ∩ box (a box); for L2 the
result is feasible but not the Euclidean projection onto the intersection (as in torchattacks).

Units and the box: ε and α are in the units of the model's inputs. trainlab's inputs are standardised
features (mnist1d: zero mean, unit variance), ±1 bits or one-hot codes, not [0, 1] pixels, so there is no
natural box: ``bounds=None`` (the default) leaves the inputs unbounded; ``bounds=(0.0, 1.0)`` is torchattacks'
image convention; tensors broadcastable to ``x`` give a box per feature. Inputs outside ``bounds`` are refused.

One-hot inputs (``modular``'s vector kind): an attack is a continuous perturbation of the one-hot encoding,
which the MLP reads like any real vector. It is allowed, and it measures how far from the code of ``(a, b)``
in input space the prediction changes; it does not change the operands. Mind the dimension: an L∞ ε moves
every one of the 2p coordinates, an L2 distance of up to ε·√(2p) (two codes are √2 or 2 apart). Token inputs
(integer ids, trainlab's Transformer) have no continuous neighbourhood: refused with a ``ValueError``.

Loss: ``loss_fn(output, y)`` returns one loss per example (default: cross-entropy with ``reduction="none"``);
the attacks differentiate their sum, so each example moves along its own loss's gradient whatever the batch
(torchattacks differentiates the batch mean: the same signs and directions).

The model is evaluated in eval mode (dropout off, batch-norm running statistics: examples do not interact) and
every submodule's mode is restored after; only the input gradient is taken (``torch.autograd.grad``), so
parameters' ``.grad`` is untouched. The attacks work inside a caller's ``torch.no_grad()``.

Randomness: ``generator`` (a ``torch.Generator`` on ``x``'s device) draws the random starts; the same generator
state gives the same result. ``None`` uses torch's global generator, like every torch sampling function (a
training loss then draws from the RNG the trainer seeds and checkpoints). Per start, L∞ draws one uniform
tensor shaped like ``x``; L2 one normal tensor shaped like ``x``, then ``N`` uniforms: the calls torchattacks
makes, so a generator seeded with ``s`` reproduces torchattacks' start after ``torch.manual_seed(s)``.

COST (N examples): ``fgsm``: 1 forward + 1 backward of the batch. ``pgd``: restarts·steps·(1 forward +
1 backward), plus one forward per start to compare them when restarts > 1. ``adversarial_accuracy``: ``pgd``'s
plus 1 forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.probes.mode import probe_mode

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
Bounds = tuple[float | Tensor, float | Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

STEP_SIZE_FACTOR = 2.5  # default α = 2.5·ε/steps (Madry et al.'s rule; torchattacks' 2/255 at ε = 8/255, 10 steps)


def cross_entropy(output: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy of class logits (computed in float32 at least): the attacks' default loss."""
    return F.cross_entropy(output.float() if output.dtype in (torch.float16, torch.bfloat16) else output, y,
                           reduction="none")


def default_alpha(eps: float, steps: int) -> float:
    """PGD's step size when none is given: ``2.5·ε/steps``, so the steps can cross the ball and back."""
    return STEP_SIZE_FACTOR * eps / steps


# ------------------------------------------------------------------------------------------------ attacks


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, loss_fn: LossFn = cross_entropy,
         bounds: Bounds | None = None) -> Tensor:
    """Fast gradient sign method: ``Π_box(x + ε·sign ∇_x L(f(x), y))`` (Goodfellow et al. 2015).

    Args:
        model: any ``nn.Module`` mapping ``x`` to outputs that ``loss_fn`` reads.
        x: ``(N, ...)`` real-valued inputs (integer token ids raise ``ValueError``).
        y: ``(N, ...)`` targets for ``loss_fn``.
        eps: ε ≥ 0, the L∞ radius in input units.
        loss_fn: per-example losses ``(N,)`` of ``(model(x), y)`` (default: cross-entropy).
        bounds: ``(low, high)`` box of valid inputs (floats or tensors broadcastable to ``x``), or None.

    COST: 1 forward + 1 backward. Returns the adversarial inputs, detached, shaped like ``x``.
    """
    x, box = _check_inputs(x, bounds)
    _check_radius(eps)
    with _attacking(model):
        g = _input_gradient(model, x, y, loss_fn)
    return _into_box(x + eps * g.sign(), box).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, *, norm: Norm = "linf",
        restarts: int = 1, random_start: bool = True, generator: torch.Generator | None = None,
        loss_fn: LossFn = cross_entropy, bounds: Bounds | None = None) -> Tensor:
    """Projected gradient ascent on the loss within the ε-ball (Madry et al. 2018); the module doc has the rule.

    Args:
        model, x, y, loss_fn, bounds: as in :func:`fgsm`.
        eps: ε ≥ 0, the radius of the ball (L∞ or L2, input units).
        alpha: α > 0, the step length (L∞: per coordinate; L2: of the whole step). :func:`default_alpha` gives
            2.5·ε/steps.
        steps: gradient steps per start (≥ 1).
        norm: ``"linf"`` (sign steps, box-shaped ball) or ``"l2"`` (normalised-gradient steps, round ball).
        restarts: random starts (≥ 1); each example keeps its worst (misclassified first, then highest loss).
        random_start: start at a random point of the ball (True) or at ``x`` (False; only with restarts=1).
        generator: draws the random starts (on ``x``'s device); None: torch's global generator.

    COST: restarts·steps·(1 forward + 1 backward), plus restarts forwards when restarts > 1.
    Returns the adversarial inputs, detached, shaped like ``x``.
    """
    x, box = _check_inputs(x, bounds)
    _check_radius(eps)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"the step size alpha must be a finite number > 0, got {alpha!r}")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 need random_start=True: every start at x would give the same result")
    with _attacking(model):
        worst: Tensor | None = None
        score: tuple[Tensor, Tensor] | None = None
        for _ in range(restarts):
            start = _random_start(x, eps, norm, generator) if random_start else torch.zeros_like(x)
            x_adv = _into_box(x + start, box)
            for _ in range(steps):
                g = _input_gradient(model, x_adv, y, loss_fn)
                x_adv = _into_box(x + _project(x_adv + _ascent(g, alpha, norm) - x, eps, norm), box)
            if restarts == 1:
                return x_adv.detach()
            new = _badness(model, x_adv, y, loss_fn)
            if worst is None or score is None:
                worst, score = x_adv, new
                continue
            wrong, loss = new
            # misclassified beats correct; among equals the higher loss wins
            better = (wrong & ~score[0]) | ((wrong == score[0]) & (loss > score[1]))
            keep = better.view(-1, *[1] * (x.dim() - 1))
            worst = torch.where(keep, x_adv, worst)
            score = (torch.where(better, wrong, score[0]), torch.where(better, loss, score[1]))
    assert worst is not None
    return worst.detach()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` whose largest output is the class ``y`` (eval mode, no gradient). COST: 1 forward."""
    _check_labels(y)
    with torch.no_grad(), probe_mode(model):
        return float(_wrong(model(x), y).logical_not().float().mean())


def adversarial_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 10,
                         alpha: float | None = None, norm: Norm = "linf", restarts: int = 1,
                         generator: torch.Generator | None = None, loss_fn: LossFn = cross_entropy,
                         bounds: Bounds | None = None) -> float:
    """Accuracy on the inputs :func:`pgd` finds: the fraction of ``x`` classified ``y`` at every point it tried.

    Robust accuracy under PGD is an upper bound on the true robust accuracy at ε (a stronger attack can only
    lower it). ``eps=0`` is the clean accuracy, without an attack. ``alpha`` defaults to :func:`default_alpha`;
    the other arguments are :func:`pgd`'s. ``y`` must be class indices ``(N,)`` of outputs ``(N, classes)``.

    COST: :func:`pgd`'s + 1 forward (none of them when ``eps=0``).
    """
    _check_labels(y)
    if eps == 0:
        return accuracy(model, x, y)
    x_adv = pgd(model, x, y, eps, default_alpha(eps, steps) if alpha is None else alpha, steps, norm=norm,
                restarts=restarts, generator=generator, loss_fn=loss_fn, bounds=bounds)
    return accuracy(model, x_adv, y)


# ------------------------------------------------------------------------------------------------ pieces


@contextmanager
def _attacking(model: nn.Module) -> Iterator[None]:
    """Eval mode (modes restored after) with gradients on, even inside the caller's ``torch.no_grad()``."""
    with torch.enable_grad(), probe_mode(model):
        yield


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """∇ of the summed per-example losses with respect to the inputs only (parameters' ``.grad`` untouched)."""
    x = x.detach().requires_grad_(True)
    losses = _per_example(loss_fn(model(x), y), len(x))
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad


def _per_example(losses: Tensor, n: int) -> Tensor:
    """``(N,)`` losses; a loss per token ``(N, T)`` is averaged per example."""
    if losses.dim() == 0 or losses.shape[0] != n:
        raise ValueError(f"loss_fn must return one loss per example (reduction='none'), got shape "
                         f"{tuple(losses.shape)} for {n} examples")
    return losses.reshape(n, -1).mean(dim=1)


def _ascent(g: Tensor, alpha: float, norm: Norm) -> Tensor:
    """The step: ``α·sign g`` (L∞) or ``α·g/‖g‖₂`` per example (L2; a zero gradient gives a zero step)."""
    if norm == "linf":
        return alpha * g.sign()
    return alpha * (g / _norms(g).clamp_min(1e-12))


def _project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """``δ`` onto the ε-ball: clamp per coordinate (L∞) or shrink each example to length ≤ ε (L2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    # the floor keeps ε/‖δ‖ finite at δ = 0 (δ stays 0 instead of becoming 0·inf = nan)
    return delta * torch.clamp(eps / _norms(delta).clamp_min(1e-30), max=1.0)


def _random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """δ0: U(−ε, ε) per coordinate (L∞) or ε·u·z/‖z‖₂ with z Gaussian, u ~ U(0, 1) per example (L2)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    z = torch.empty_like(x).normal_(generator=generator)
    u = torch.empty(len(x), dtype=x.dtype, device=x.device).uniform_(0, 1, generator=generator)
    return z * (u.view(-1, *[1] * (x.dim() - 1)) / _norms(z) * eps)


def _norms(t: Tensor) -> Tensor:
    """Per-example L2 norms over all non-batch coordinates, shaped to broadcast against ``t``."""
    # reshape, not flatten(1): a batch of scalars (N,) has no dimension 1
    return t.reshape(len(t), -1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def _into_box(x: Tensor, box: tuple[Tensor, Tensor] | None) -> Tensor:
    return x if box is None else torch.clamp(x, min=box[0], max=box[1])


def _badness(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
    """(misclassified?, loss) per example at ``x``; targets that are not class indices are never 'wrong'."""
    with torch.no_grad():
        out = model(x)
        losses = _per_example(loss_fn(out, y), len(x))
        if y.is_floating_point() or out.dim() != y.dim() + 1:
            return torch.zeros_like(losses, dtype=torch.bool), losses
        return _wrong(out, y).reshape(len(x), -1).any(dim=1), losses


def _wrong(out: Tensor, y: Tensor) -> Tensor:
    return out.argmax(dim=-1) != y


def _check_inputs(x: Tensor, bounds: Bounds | None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``x`` detached, and ``bounds`` as two tensors of ``x``'s dtype and device (torch.clamp takes two numbers or
    two tensors, not one of each)."""
    if not x.is_floating_point():
        raise ValueError(f"adversarial attacks perturb real-valued inputs; got {x.dtype} (integer token ids have "
                         f"no continuous neighbourhood: attack an embedding or one-hot inputs instead)")
    if x.dim() < 1 or len(x) == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    if bounds is None:
        return x.detach(), None
    low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    if bool((low > high).any()):
        raise ValueError("bounds must be (low, high) with low <= high everywhere")
    if bool((x < low).any() or (x > high).any()):
        raise ValueError(f"inputs lie outside bounds (min {float(x.min()):g}, max {float(x.max()):g}): the box must "
                         f"contain the clean inputs")
    return x.detach(), (low, high)


def _check_radius(eps: float) -> None:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _check_labels(y: Tensor) -> None:
    if y.is_floating_point() or y.dim() != 1:
        raise ValueError(f"accuracy needs class indices (N,), got {y.dtype} targets of shape {tuple(y.shape)}")
