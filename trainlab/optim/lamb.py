"""LAMB: layer-wise adaptive moments (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT
in 76 minutes").

Update rule, per parameter tensor ``p`` (the paper's "layer") with gradient ``g`` at step ``t``::

    m <- beta1 * m + (1 - beta1) * g                 v <- beta2 * v + (1 - beta2) * g²
    m_hat = m / (1 - beta1^t)                         v_hat = v / (1 - beta2^t)   (bias_correction=True)
    u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p
    trust = ||p|| / ||u||        (||p|| first clamped to ``clamp`` when set; trust = 1 if either norm is 0)
    p <- p - lr * trust * u

Units: ``trust * u`` has the norm of ``p``, so ``lr`` is the step as a fraction of each tensor's norm (a
tensor moves by ``lr * ||p||`` per step, whatever the gradient scale). Weight decay sits inside ``u``, so it
is normalised by the trust ratio too. Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight_decay 0,
bias_correction True, clamp None (no clamp).

State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` (in the parameter's dtype).

Deviations from public references (the rule above is the paper's Algorithm 2):

- cybertronai/pytorch-lamb has no bias correction (``bias_correction=False`` here) and clamps ``||p||`` to 10
  (``clamp=10``).
- ``pytorch_optimizer.Lamb`` by default decouples weight decay (``p *= 1 - lr * wd`` outside the trust ratio,
  ``weight_decouple=True``), divides the step by ``1 - beta1^t`` after the trust ratio (unless
  ``adam_debias=True``) but never corrects ``v``, clamps ``||p||`` to 10 (class attribute ``clamp``), and adds
  ``eps`` to ``||u||`` in the trust ratio. With ``weight_decouple=False, adam_debias=True`` and eps=0 it equals
  this class with ``bias_correction=False, clamp=10``; ``tests/optim/test_lamb.py`` checks both facts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.compiled import compiled, scalars
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure, groups_with_grads, hyperparameter, stepped_state, use_foreach


def _trust_ratio(w_norm: Tensor, u_norm: Tensor, clamp: float | None) -> Tensor:
    if clamp is not None:
        w_norm = w_norm.clamp(max=clamp)
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)


def _trust_ratios(w_norms: Sequence[Tensor], u_norms: Sequence[Tensor], clamp: float | None) -> list[Tensor]:
    """Trust ratios of many tensors; stacked into one computation when their norms share dtype and device."""
    if len({(n.dtype, n.device) for n in w_norms}) == 1:
        return list(_trust_ratio(torch.stack(list(w_norms)), torch.stack(list(u_norms)), clamp).unbind())
    return [_trust_ratio(w, u, clamp) for w, u in zip(w_norms, u_norms)]


def lamb_reference(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   steps: list[int], *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                   bias_correction: bool, clamp: float | None) -> None:
    """One LAMB step, tensor by tensor; ``steps`` are the step numbers t (already incremented)."""
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        bc1, bc2 = (1.0 - beta1**t, 1.0 - beta2**t) if bias_correction else (1.0, 1.0)
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
        u = m.div(bc1).div_(denom)
        if weight_decay != 0.0:
            u.add_(p, alpha=weight_decay)
        trust = _trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u), clamp)
        p.add_(u.mul_(trust), alpha=-lr)


def lamb_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 steps: list[int], *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 bias_correction: bool, clamp: float | None) -> None:
    """The same step as :func:`lamb_reference` with ``torch._foreach_*`` ops over all tensors at once."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    if bias_correction:
        torch._foreach_div_(denoms, [math.sqrt(1.0 - beta2**t) for t in steps])
        updates = torch._foreach_div(exp_avgs, [1.0 - beta1**t for t in steps])
    else:
        updates = torch._foreach_div(exp_avgs, 1.0)
    torch._foreach_add_(denoms, eps)
    torch._foreach_div_(updates, denoms)
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    trusts = _trust_ratios(torch._foreach_norm(params), torch._foreach_norm(updates), clamp)
    torch._foreach_mul_(updates, trusts)
    torch._foreach_add_(params, updates, alpha=-lr)


def lamb_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               hyper: Tensor, bias_corrections1: Tensor, bias_corrections2_sqrt: Tensor, clamp: float | None) -> None:
    """The same step as :func:`lamb_reference` for ``torch.compile``.

    ``hyper`` = (lr, beta1, beta2, eps, weight_decay); ``bias_corrections1[i]`` = 1 - beta1^t and
    ``bias_corrections2_sqrt[i]`` = sqrt(1 - beta2^t) for tensor i (ones without bias correction). Inductor
    makes two passes per tensor: the moments and ||u|| (with ||p||), then the update of p.
    """
    lr, beta1, beta2, eps, weight_decay = hyper.unbind()
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        m.mul_(beta1).add_(g * (1.0 - beta1))
        v.mul_(beta2).add_(g * g * (1.0 - beta2))
        u = m / bias_corrections1[i] / (v.sqrt() / bias_corrections2_sqrt[i] + eps) + weight_decay * p
        trust = _trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u), clamp)
        p.sub_(u * (trust * lr))


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020): an Adam direction rescaled per tensor by the trust ratio ``||p|| / ||u||``.

    Args:
        params: tensors or param-group dicts.
        lr: step as a fraction of each tensor's norm (default 1e-3); a float or a 0-dim tensor.
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        eps: added to ``sqrt(v_hat)`` (default 1e-6).
        weight_decay: L2 term added to the Adam direction, inside the trust ratio (default 0).
        bias_correction: divide the moments by ``1 - beta^t`` (default True; the cybertronai reference has none).
        clamp: clamp ``||p||`` to this value in the trust ratio (default None; pytorch-optimizer uses 10).
        foreach: the ``torch._foreach_*`` implementation (True), :func:`lamb_reference` per tensor (False), or
                by device (None, default: foreach on CUDA; per tensor on CPU, where it measured faster).
        compile: run :func:`lamb_fused` through ``torch.compile`` (default False): two fused passes per tensor
                after a one-off compilation (see :mod:`trainlab.optim.compiled`).
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True,
                 clamp: float | None = None, *, foreach: bool | None = None, compile: bool = False) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1))")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if clamp is not None and not clamp > 0.0:
            raise ValueError(f"Invalid clamp: {clamp} (must be > 0 or None)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                      "bias_correction": bias_correction, "clamp": clamp, "foreach": foreach,
                                      "compile": compile})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group, params, grads in groups_with_grads(self):
            (exp_avgs, exp_avg_sqs), steps = stepped_state(self, params, ("exp_avg", "exp_avg_sq"))
            beta1, beta2 = group["betas"]
            lr = hyperparameter(group["lr"])
            if group.get("compile"):
                ones = [1.0] * len(steps)
                bc1 = [1.0 - beta1**t for t in steps] if group["bias_correction"] else ones
                bc2 = [math.sqrt(1.0 - beta2**t) for t in steps] if group["bias_correction"] else ones
                hyper = scalars((lr, beta1, beta2, group["eps"], group["weight_decay"]), params[0])
                compiled(lamb_fused)(params, grads, exp_avgs, exp_avg_sqs, hyper, scalars(bc1, params[0]),
                                     scalars(bc2, params[0]), group["clamp"])
                continue
            update = lamb_foreach if use_foreach(group.get("foreach"), params) else lamb_reference
            update(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1, beta2=beta2,
                   eps=group["eps"], weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                   clamp=group["clamp"])
        return loss


@dataclass(frozen=True)
class LambOptions:
    lr: float = option(1e-3, ge=0.0, help="step as a fraction of each tensor's norm (trust ratio)")
    betas: tuple[float, float] = option((0.9, 0.999), ge=0.0, lt=1.0, help="decay rates of the two moments")
    eps: float = option(1e-6, ge=0.0, help="added to sqrt(v_hat)")
    weight_decay: float = option(0.0, ge=0.0, help="L2 term added to the Adam direction, inside the trust ratio")
    bias_correction: bool = option(True, help="divide the moments by 1 - beta^t (the cybertronai reference: false)")
    clamp: float | None = option(None, gt=0.0, help="clamp ||p|| to this value in the trust ratio "
                                                    "(pytorch-optimizer: 10; none: no clamp)")
    foreach: bool | None = option(None, help="torch._foreach_* path (true), per tensor (false); none: by device "
                                                "(foreach on CUDA, per tensor on CPU)")
    compile: bool = option(False, help="fused torch.compile kernel: near the memory floor after a one-off compile")


OPTIMIZERS.add("lamb", Lamb, options=LambOptions, summary="Adam direction rescaled per tensor by ||p|| / ||update||",
               source="trainlab", own=True, tensor_lr=True,
               paper="You et al. 2020, Large Batch Optimization for Deep Learning: Training BERT in 76 minutes")
