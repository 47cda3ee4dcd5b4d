"""Robustness: clean accuracy and accuracy under a PGD attack at several radii ε, over training.

Humayun, Balestriero & Baraniuk 2024, "Deep Networks Always Grok and Here is Why": *delayed robustness* — a
network's accuracy under an ℓ∞ PGD attack keeps rising long after it interpolated its training set and after
it generalised, so a grokking run reads memorized → generalized → robust (the ``robust`` event,
:mod:`trainlab.train.events`). The probe measures, on the fixed validation examples of the probe batch
(``probes.examples``; the same points at every call, so values are comparable over training)::

    clean_acc          = mean_i 1[argmax f(x_i) = y_i]
    adv_acc_eps{ε}     = mean_i 1[argmax f(x'_i) = y_i],   x' = PGD(x, y, ε)   for each ε in probes.robust_eps

with :func:`trainlab.robust.attacks.pgd`: norm ``probes.robust_norm`` (default ``linf``), ``probes.robust_steps``
steps (default 10) of size α = 2.5·ε/steps from a random start, ``probes.robust_restarts`` starts (default 1,
each example's worst kept), on the workload's per-example loss. The attack is an upper bound on the true
robust accuracy (a stronger attack can only lower it); the curves' shape over training is the point.

Units: ε is in the units of the model's inputs, with no box: trainlab's inputs are standardised features
(mnist1d: zero mean, unit variance), ±1 bits or one-hot codes. Defaults ε = 0.05, 0.1, 0.2 are small against
the unit feature scale; on one-hot inputs (modular's vector kind) an attack is a continuous perturbation of
the encoding (see :mod:`trainlab.robust.attacks`), and an ℓ∞ ε moves all 2p coordinates at once. Token inputs
and real-valued targets do not apply. Keys: ``clean_acc`` and ``adv_acc_eps{ε:g}`` (``adv_acc_eps0.1``).

Randomness: the random starts come from a ``torch.Generator`` seeded with ``probes.seed`` afresh for each ε at
each call (the same starts every time; each ε's value independent of the others'; the global RNG untouched).

COST per call (N = probes.examples validation examples, E radii, S steps, R restarts): 1 forward (clean), and
per ε: R·S forward + backward passes (input gradient only), R forwards to compare restarts when R > 1, and
1 forward for the accuracy — with the defaults (E = 3, S = 10, R = 1): 30 forward + backward passes and
4 forwards of the probe batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from trainlab.probes.registry import NotApplicable, ProbeContext, register
from trainlab.robust.attacks import Norm, accuracy, adversarial_accuracy


def eps_key(eps: float) -> str:
    """The key of the accuracy at ``eps``: ``adv_acc_eps0.1`` (``:g`` formatting)."""
    return f"adv_acc_eps{eps:g}"


def robustness(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float], *,
               loss_fn: Callable[[Tensor, Tensor], Tensor], steps: int = 10, norm: Norm = "linf",
               restarts: int = 1, seed: int = 0) -> dict[str, float]:
    """``{"clean_acc": ..., "adv_acc_eps{ε}": ...}`` for class indices ``y`` of ``model(x)``.

    Args:
        model: a classifier of real-valued inputs ``x`` ``(N, ...)``; ``y``: ``(N,)`` class indices.
        eps: the radii ε, input units (none: the clean accuracy only).
        loss_fn: per-example losses ``(N,)`` that the attack ascends (the workload's loss).
        steps, norm, restarts: PGD's (step size 2.5·ε/steps).
        seed: seeds the random starts, afresh for each ε.

    COST: 1 forward + per ε restarts·steps·(forward + backward) + 1 forward (+ restarts forwards if > 1).
    """
    out = {"clean_acc": accuracy(model, x, y)}
    for e in eps:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        out[eps_key(e)] = adversarial_accuracy(model, x, y, e, steps=steps, norm=norm, restarts=restarts,
                                               generator=gen, loss_fn=loss_fn)
    return out


@register("robustness", summary="clean and PGD adversarial accuracy on the probe's validation examples at each "
                                "probes.robust_eps (delayed robustness)",
          cost="per eps: robust_restarts * robust_steps forward + backward passes (input gradient only) + 1 forward; "
               "plus 1 forward (clean)",
          paper="Humayun et al. 2024, Deep Networks Always Grok and Here is Why")
def _robustness(ctx: ProbeContext) -> dict[str, float]:
    if not ctx.float_inputs:
        raise NotApplicable("adversarial attacks need real-valued inputs; this model reads tokens")
    if ctx.y_val.is_floating_point() or ctx.y_val.dim() != 1:
        raise NotApplicable("adversarial accuracy needs one class label per example")
    o = ctx.options
    return robustness(ctx.model, ctx.x_val, ctx.y_val, o.robust_eps, loss_fn=ctx.loss_fn, steps=o.robust_steps,
                      norm=o.robust_norm, restarts=o.robust_restarts, seed=o.seed)
