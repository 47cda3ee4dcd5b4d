"""Opposing signals: the examples whose loss one gradient step moves most, and whether they pull against each other.

Rosenfeld & Risteski 2024, "Outliers with Opposing Signals Have an Outsized Effect on Neural Network
Optimization" (ICLR 2024): a few paired groups of training examples share a strong, consistent feature (sky
behind planes and behind other classes) but carry opposite labels, so their gradients point in opposite
directions. Early training balances them in a narrow valley; as it sharpens, each step overshoots and their losses
rise and fall *out of phase* -- high on one group, then on the other -- until the total loss spikes. The paper
finds them by logging every example's loss and taking those whose loss changes most between steps.

This probe measures that within one call, with no state kept between calls (the prober's ``cache`` is not
checkpointed, so a cross-call loss history would silently restart on resume). On the fixed probe training subset
(``probes.examples``; N examples ``x_i, y_i``), at the current parameters θ::

    ℓ_i      = per-example loss at θ (the workload's loss, averaged over a sequence's positions)
    g        = ∇_θ (1/N) Σ_i ℓ_i                                 (the probe batch's mean gradient)
    θ'       = θ − η·g                                           (a *virtual* SGD step; the model is not changed)
    Δ_i      = ℓ_i(θ') − ℓ_i(θ)                                  (loss units)
    top      = the k = ceil(probes.opposing_signals_fraction·N) examples with the largest |Δ_i| (ties: lower index)
    up, down = the members of ``top`` with Δ_i > 0 and Δ_i < 0 (an exact 0 is neither)
    cosine   = cos(∇_θ mean_{i∈up} ℓ_i, ∇_θ mean_{i∈down} ℓ_i)    (the pairing score; NaN when a side is empty)

η is ``probes.opposing_signals_lr`` (default 0: the trainer's lr at the probed step). The virtual step is plain
SGD whatever the optimizer is: under Adam the real step is preconditioned and of another size, so set η
explicitly there (the sign pattern of Δ is first-order, Δ_i ≈ −η⟨∇ℓ_i, g⟩, and does not depend on η's scale
while η is small; the paper's oscillation needs an η large enough to overshoot).

Keys: ``k``; ``up`` and ``down`` (counts in ``top``); ``share`` = Σ_top |Δ_i| / Σ_all |Δ_i| (how concentrated
the change is; k/N when it is spread evenly); ``mean_delta`` = mean Δ_i over the probe batch (the batch loss
change of the virtual step); ``cosine``. Opposing signals read as: a large ``share``, both ``up`` and ``down``
non-zero, and ``cosine`` near −1 (the two groups' gradients dominated by one shared feature with opposite
signs). A negative cosine is partly built in -- ``up`` and ``down`` are split by the sign of ⟨∇ℓ_i, g⟩ -- so
moderate negative values are ordinary; only values near −1 say the groups are each other's mirror image.
Thresholds are unverified: the paper gives none (it inspects the top examples by hand), and neither the
fraction nor a cosine cut-off comes from it.

Deviation from the paper: it compares losses across *actual* training steps (several, with the real optimizer and
minibatches); this probe takes one virtual full-probe-batch SGD step from the current parameters. What it
reports is the direction the next step pulls each example, not the observed oscillation.

File: ``<run dir>/opposing_signals/step_<N>.json`` (written atomically) with the top examples, largest |Δ|
first: ``index`` (positions in the probe subset), ``train_index`` (positions in the training set, when they can
be recovered and verified; else null), ``delta``, ``loss`` and the scalars above.

COST per call (N = probes.examples): 1 forward with graph + 1 backward (g), 1 forward without graph (at θ'),
and up to 2 more backward passes through the retained graph (the two groups' mean gradients); memory: the graph
of one probe-batch forward and 3 parameter-sized gradient copies. Eval mode (dropout off), parameters, ``.grad``
and the global RNG untouched (``torch.autograd.grad`` returns gradients instead of accumulating them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from trainlab.probes.mode import probe_mode
from trainlab.probes.registry import ProbeContext, register


@dataclass(frozen=True)
class OpposingSignals:
    """One call's result (see the module doc for the definitions). Tensors are float64/int64 on the CPU."""

    losses: Tensor  # (N,) ℓ_i at θ
    deltas: Tensor  # (N,) ℓ_i(θ') − ℓ_i(θ)
    top: Tensor  # (k,) indices into the probe batch, largest |Δ| first
    up: int
    down: int
    cosine: float
    share: float

    def scalars(self) -> dict[str, float]:
        return {"k": float(len(self.top)), "up": float(self.up), "down": float(self.down), "share": self.share,
                "mean_delta": float(self.deltas.mean()), "cosine": self.cosine}


def _per_example(losses: Tensor) -> Tensor:
    # Sequence workloads return (N, T) losses: one example's loss is the mean over its positions.
    losses = losses.float()
    return losses.mean(dim=tuple(range(1, losses.dim()))) if losses.dim() > 1 else losses


def _flat(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)])


def opposing_signals(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
                     lr: float, fraction: float = 0.1) -> OpposingSignals:
    """Per-example loss changes of a virtual SGD step of size ``lr`` on ``(x, y)``, the top ``fraction`` of
    examples by |Δ|, and the cosine between the mean gradients of those going up and those going down.

    Args:
        model: any module; ``loss_fn(model(x), y)`` gives unreduced losses ``(N,)`` or ``(N, T)``.
        lr: η of the virtual step θ' = θ − η·∇ mean ℓ (> 0; parameter units per gradient unit).
        fraction: k = ceil(fraction·N) examples reported, in (0, 1].

    COST: 1 forward + 1 backward, 1 forward without graph, up to 2 backward through the retained graph.
    """
    if not lr > 0:
        raise ValueError(f"the virtual step needs lr > 0, got {lr}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("the model has no trainable parameters")
    params = list(named.values())
    with probe_mode(model):
        losses = _per_example(loss_fn(model(x), y))
        n = losses.shape[0]
        grads = torch.autograd.grad(losses.mean(), params, retain_graph=True, allow_unused=True)
        with torch.no_grad():
            stepped = {k: p.detach() - lr * (g if g is not None else torch.zeros_like(p))
                       for (k, p), g in zip(named.items(), grads)}
            after = _per_example(loss_fn(functional_call(model, stepped, (x,)), y))
        deltas = (after.double() - losses.detach().double()).cpu()
        k = max(1, math.ceil(fraction * n))
        # Stable sort on -|Δ|: equal changes keep index order, so the reported set is deterministic.
        top = torch.argsort(-deltas.abs(), stable=True)[:k]
        up, down = top[deltas[top] > 0], top[deltas[top] < 0]
        group_grads: list[Tensor | None] = []
        for members in (up, down):
            if len(members) == 0:
                group_grads.append(None)
                continue
            idx = members.to(losses.device)
            group_grads.append(_flat(torch.autograd.grad(losses[idx].mean(), params, retain_graph=True,
                                                         allow_unused=True), params))
    g_up, g_down = group_grads
    if g_up is None or g_down is None:
        cosine = math.nan
    else:
        denom = float(g_up.norm() * g_down.norm())
        cosine = float(g_up @ g_down) / denom if denom > 0 else math.nan
    total = float(deltas.abs().sum())
    share = float(deltas[top].abs().sum()) / total if total > 0 else math.nan
    return OpposingSignals(losses=losses.detach().double().cpu(), deltas=deltas, top=top, up=len(up),
                           down=len(down), cosine=cosine, share=share)


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON atomically (:func:`trainlab.rundir.atomic.atomic_write_text`: a reader never sees a
    half-written file and a failure leaves any previous file intact), creating its directory. NaN is written as
    null."""
    from pathlib import Path

    from trainlab.rundir.atomic import atomic_write_text

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in payload.items()}
    atomic_write_text(target, json.dumps(clean, allow_nan=False))


@register("opposing_signals", summary="examples whose loss a virtual SGD step moves most (top fraction by |dloss|), "
                                      "how many go up / down, and the cosine of the two groups' mean gradients "
                                      "(near -1: opposing signals); top examples in opposing_signals/step_N.json",
          cost="1 forward + 1 backward, 1 forward (after the virtual step), up to 2 backward (the groups' gradients) "
               "over the probe batch",
          paper="Rosenfeld & Risteski 2024, Outliers with Opposing Signals Have an Outsized Effect on Neural Network "
                "Optimization")
def _opposing_signals(ctx: ProbeContext) -> dict[str, float]:
    lr = ctx.options.opposing_signals_lr or ctx.lr
    if not lr > 0:
        return {}  # a warmup starting at lr 0: no step to take now, but later calls have one
    result = opposing_signals(ctx.model, ctx.loss_fn, ctx.x_train, ctx.y_train, lr=lr,
                              fraction=ctx.options.opposing_signals_fraction)
    scalars = result.scalars()
    if ctx.run_dir is not None:
        order = ctx.train_order()
        train = None if order is None else order[: len(ctx.x_train)]
        top = result.top
        write_json(Path(ctx.run_dir) / "opposing_signals" / f"step_{ctx.step}.json", {
            "step": ctx.step, "lr": lr, "fraction": ctx.options.opposing_signals_fraction, **scalars,
            "index": top.tolist(), "train_index": None if train is None else train[top].tolist(),
            "delta": result.deltas[top].tolist(), "loss": result.losses[top].tolist()})
    return scalars
