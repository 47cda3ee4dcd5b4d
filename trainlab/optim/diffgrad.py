"""diffGrad (Dubey et al. 2019, "diffGrad: An Optimization Method for Convolutional Neural Networks").

Adam whose first moment is damped per coordinate by a "friction" that is small when the gradient has stopped
changing (near an optimum) and close to 1 when it changes fast. Per parameter tensor, step ``t``::

    g <- g + weight_decay * p                              (L2, the paper's; or decoupled, see below)
    m <- beta1 * m + (1 - beta1) * g                       v <- beta2 * v + (1 - beta2) * g²
    xi = sigmoid(|g_prev - g|)                             in (0.5, 1); g_prev = 0 at t = 1
    p <- p - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * xi * m / (sqrt(v) + eps)
    g_prev <- g

Units: as Adam, ``lr`` bounds the per-coordinate step (times xi <= 1). Defaults: lr 1e-3, betas (0.9, 0.999),
eps 1e-8, weight_decay 0 (coupled L2 as in the paper's code; ``decoupled_weight_decay=True`` decays
``p *= 1 - lr * weight_decay`` instead, AdamW-style, the ``torch.optim.Adam`` name for that switch).

State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq``, ``previous_grad`` (the parameter's dtype).

This is the corrected rule: the first public implementation stored ``previous_grad = grad`` -- an alias of
``p.grad`` -- so once the gradient buffer was reused in place the difference was always 0 and xi always 0.5
(plain Adam at half the lr). Here ``previous_grad`` is a copy (``tests/optim/test_diffgrad.py`` checks
xi != 0.5 with a reused gradient buffer).

Deviations from ``pytorch_optimizer.DiffGrad`` (its defaults otherwise agree): its weight decay defaults to
decoupled (``weight_decouple=True``; ours defaults to the paper's L2, set ``decoupled_weight_decay=True`` to
match), its denominator is ``sqrt(v + 1e-15) + eps`` (ours ``sqrt(v) + eps``), and with coupled decay it adds
``weight_decay * p`` into ``p.grad`` in place (ours leaves ``p.grad`` untouched). ``rectify`` (RAdam) and
``ams_bound`` are not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.compiled import compiled, scalars
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure, groups_with_grads, hyperparameter, stepped_state, use_foreach


def friction(previous_grad: Tensor, grad: Tensor) -> Tensor:
    """diffGrad's friction coefficient ``sigmoid(|g_prev - g|)`` (0.5 where the gradient did not change)."""
    return (previous_grad - grad).abs_().sigmoid_()


def _step_size(lr: float, beta1: float, beta2: float, t: int) -> float:
    return lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


def diffgrad_reference(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                       previous_grads: list[Tensor], steps: list[int], *, lr: float, beta1: float, beta2: float,
                       eps: float, weight_decay: float, decoupled_weight_decay: bool) -> None:
    """One diffGrad step, tensor by tensor; ``steps`` are the step numbers t (already incremented)."""
    for p, g, m, v, prev, t in zip(params, grads, exp_avgs, exp_avg_sqs, previous_grads, steps):
        if weight_decay != 0.0:
            if decoupled_weight_decay:
                p.mul_(1.0 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = v.sqrt().add_(eps)
        xi_m = friction(prev, g).mul_(m)
        p.addcdiv_(xi_m, denom, value=-_step_size(lr, beta1, beta2, t))
        prev.copy_(g)


def diffgrad_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                     previous_grads: list[Tensor], steps: list[int], *, lr: float, beta1: float, beta2: float,
                     eps: float, weight_decay: float, decoupled_weight_decay: bool) -> None:
    """The same step as :func:`diffgrad_reference` with ``torch._foreach_*`` ops over all tensors at once."""
    if weight_decay != 0.0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    xi_m = torch._foreach_sub(previous_grads, grads)
    torch._foreach_abs_(xi_m)
    torch._foreach_sigmoid_(xi_m)
    torch._foreach_mul_(xi_m, exp_avgs)
    torch._foreach_addcdiv_(params, xi_m, denoms, [-_step_size(lr, beta1, beta2, t) for t in steps])
    torch._foreach_copy_(previous_grads, grads)


def diffgrad_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   previous_grads: list[Tensor], hyper: Tensor, step_sizes: Tensor,
                   decoupled_weight_decay: bool) -> None:
    """The same step as :func:`diffgrad_reference` for ``torch.compile``; one fused pass per tensor.

    ``hyper`` = (lr, beta1, beta2, eps, weight_decay); ``step_sizes[i]`` = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    for tensor i. The momentum's lerp is written out as eager ``lerp`` computes it for weights below 0.5
    (``m + w * (g - m)``), so the two paths round alike.
    """
    lr, beta1, beta2, eps, weight_decay = hyper.unbind()
    for i, (p, g, m, v, prev) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, previous_grads)):
        if decoupled_weight_decay:
            p.mul_(1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m.add_((g - m) * (1.0 - beta1))
        v.mul_(beta2).add_(g * g * (1.0 - beta2))
        xi = (prev - g).abs().sigmoid()
        p.sub_(xi * m / (v.sqrt() + eps) * step_sizes[i])
        prev.copy_(g)


class DiffGrad(torch.optim.Optimizer):
    """diffGrad (Dubey et al. 2019): Adam with the momentum damped by ``sigmoid(|g_prev - g|)``; see the module doc.

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (default 1e-3); a float or a 0-dim tensor.
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        eps: added to ``sqrt(v)`` (default 1e-8).
        weight_decay: L2 coefficient added to the gradient (default 0).
        decoupled_weight_decay: decay ``p *= 1 - lr * weight_decay`` instead of adding L2 (default False).
        foreach: the ``torch._foreach_*`` implementation (True), :func:`diffgrad_reference` per tensor (False), or
                by device (None, default: foreach on CUDA; per tensor on CPU, where it measured faster).
        compile: run :func:`diffgrad_fused` through ``torch.compile`` (default False): one fused pass per tensor
                after a one-off compilation (see :mod:`trainlab.optim.compiled`).
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, compile: bool = False) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1))")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                      "decoupled_weight_decay": decoupled_weight_decay, "foreach": foreach,
                                      "compile": compile})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group, params, grads in groups_with_grads(self):
            (exp_avgs, exp_avg_sqs, previous_grads), steps = stepped_state(
                self, params, ("exp_avg", "exp_avg_sq", "previous_grad"))
            beta1, beta2 = group["betas"]
            lr = hyperparameter(group["lr"])
            if group.get("compile"):
                hyper = scalars((lr, beta1, beta2, group["eps"], group["weight_decay"]), params[0])
                step_sizes = scalars([_step_size(lr, beta1, beta2, t) for t in steps], params[0])
                compiled(diffgrad_fused)(params, grads, exp_avgs, exp_avg_sqs, previous_grads, hyper, step_sizes,
                                         bool(group["decoupled_weight_decay"]))
                continue
            update = diffgrad_foreach if use_foreach(group.get("foreach"), params) else diffgrad_reference
            update(params, grads, exp_avgs, exp_avg_sqs, previous_grads, steps, lr=lr, beta1=beta1,
                   beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                   decoupled_weight_decay=group["decoupled_weight_decay"])
        return loss


@dataclass(frozen=True)
class DiffGradOptions:
    lr: float = option(1e-3, ge=0.0, help="learning rate (Adam units)")
    betas: tuple[float, float] = option((0.9, 0.999), ge=0.0, lt=1.0, help="decay rates of the two moments")
    eps: float = option(1e-8, ge=0.0, help="added to sqrt(v)")
    weight_decay: float = option(0.0, ge=0.0, help="L2 coefficient added to the gradient (the paper's)")
    decoupled_weight_decay: bool = option(False, help="decay p *= 1 - lr * weight_decay instead of adding L2 "
                                                      "(pytorch-optimizer's default)")
    foreach: bool | None = option(None, help="torch._foreach_* path (true), per tensor (false); none: by device "
                                                "(foreach on CUDA, per tensor on CPU)")
    compile: bool = option(False, help="fused torch.compile kernel: near the memory floor after a one-off compile")


OPTIMIZERS.add("diffgrad", DiffGrad, options=DiffGradOptions,
               summary="Adam with momentum damped by sigmoid(|g_prev - g|)", source="trainlab", own=True,
               tensor_lr=True,
               paper="Dubey et al. 2019, diffGrad: An Optimization Method for Convolutional Neural Networks")
