"""Certified robustness: the accuracy interval bound propagation (IBP) verifies at several radii ε, over training.

Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models":
an example is verified at ε when the IBP lower bound of every margin ``z_y − z_j`` (``j ≠ y``) over the L∞
ε-ball is > 0 (:func:`trainlab.robust.ibp.verified_error`). On the fixed validation examples of the probe
batch (``probes.examples``; the same points at every call)::

    verified_acc_eps{ε} = 1 − verified_error(model, x_val, y_val, ε)    for each ε in probes.robust_eps

a lower bound on the accuracy under any attack in the ball (so at most the ``robustness`` probe's
``adv_acc_eps{ε}``, which is at most its ``clean_acc``). Evaluated in eval mode (BatchNorm running statistics;
modes restored). ε is in the units of the model's inputs, with no data box (as the ``robustness`` probe).

Not applicable (:class:`~trainlab.probes.registry.NotApplicable`): token inputs, targets that are not one
class per example, and models IBP cannot bound (the transformer, ``param.output_scale``, layers without an
interval rule). Keys: ``verified_acc_eps{ε:g}`` (``verified_acc_eps0.1``). Deterministic (no randomness).

COST per call (N = probes.examples validation examples, E radii): per ε one IBP propagation without
gradients, about 3 forward passes of the probe batch (clean, box centre, box radius) and an ``(N, classes,
features)`` tensor at the last layer -- 3·E forwards in all (9 with the default E = 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainlab.probes.registry import NotApplicable, ProbeContext, register
from trainlab.robust.certified import check_bounded
from trainlab.robust.ibp import verified_error


def eps_key(eps: float) -> str:
    """The key of the verified accuracy at ``eps``: ``verified_acc_eps0.1`` (``:g`` formatting)."""
    return f"verified_acc_eps{eps:g}"


def verified_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float]) -> dict[str, float]:
    """``{"verified_acc_eps{ε}": 1 − verified_error}`` for each ε (input units) on ``(x, y)``, ``y`` class indices.

    COST: per ε about 3 forward passes of ``x`` (no gradients).
    """
    return {eps_key(e): 1.0 - verified_error(model, x, y, e) for e in eps}


@register("certified", summary="IBP-verified accuracy on the probe's validation examples at each probes.robust_eps "
                               "(certified robustness)",
          cost="per eps: 1 interval bound propagation without gradients, about 3 forwards of the probe batch",
          paper="Gowal et al. 2018, On the Effectiveness of Interval Bound Propagation for Training Verifiably "
                "Robust Models")
def _certified(ctx: ProbeContext) -> dict[str, float]:
    if not ctx.float_inputs:
        raise NotApplicable("interval bounds need real-valued inputs; this model reads tokens")
    if ctx.y_val.is_floating_point() or ctx.y_val.dim() != 1:
        raise NotApplicable("verified accuracy needs one class label per example")
    try:
        check_bounded(ctx.model)
    except ValueError as err:
        raise NotApplicable(str(err).splitlines()[0]) from None
    return verified_accuracy(ctx.model, ctx.x_val, ctx.y_val, ctx.options.robust_eps)
