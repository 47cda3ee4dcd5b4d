"""Lion: evoLved sIgn mOmeNtum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

Update rule, per parameter tensor ``p`` with gradient ``g`` and momentum ``m`` (state ``exp_avg``)::

    p <- p * (1 - lr * weight_decay)                      decoupled weight decay
    p <- p - lr * sign(beta1 * m + (1 - beta1) * g)       every coordinate moves by exactly lr (or 0)
    m <- beta2 * m + (1 - beta2) * g

Units: the update is a sign, so ``lr`` is the per-coordinate step length in parameter units, independent of
the gradient's scale. Defaults: lr 1e-4, betas (0.9, 0.99), weight_decay 0. The paper's guidance: an lr 3-10x
smaller than AdamW's and a weight decay 3-10x larger (the product lr * weight_decay is what decays).

State: one tensor (``exp_avg``) per parameter, in the parameter's dtype -- half AdamW's.

References: google/automl ``lion/lion_pytorch.py`` and ``lion-pytorch`` (lucidrains), whose default
(``decoupled_weight_decay=False``) is the rule above; ``tests/optim/test_lion.py`` checks parity with it.
No deviations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.compiled import compiled, scalars
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure, groups_with_grads, hyperparameter, use_foreach


def lion_reference(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: float, beta1: float,
                   beta2: float, weight_decay: float) -> None:
    """One Lion step, tensor by tensor (the readable version; updates ``params`` and ``exp_avgs`` in place)."""
    for p, g, m in zip(params, grads, exp_avgs):
        p.mul_(1.0 - lr * weight_decay)
        update = m.mul(beta1).add_(g, alpha=1.0 - beta1).sign_()
        p.add_(update, alpha=-lr)
        m.mul_(beta2).add_(g, alpha=1.0 - beta2)


def lion_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: float, beta1: float,
                 beta2: float, weight_decay: float) -> None:
    """The same step as :func:`lion_reference` with ``torch._foreach_*`` ops over all tensors at once."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    updates = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(updates, grads, alpha=1.0 - beta1)
    torch._foreach_sign_(updates)
    torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)


def lion_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], hyper: Tensor) -> None:
    """The same step as :func:`lion_reference` for ``torch.compile``; ``hyper`` = (lr, beta1, beta2, weight_decay).

    Written without ``alpha=`` Python scalars so the hyperparameters can be tensors (see
    :mod:`trainlab.optim.compiled`); Inductor fuses the four lines into one pass over p, g and m.
    """
    lr, beta1, beta2, weight_decay = hyper.unbind()
    for p, g, m in zip(params, grads, exp_avgs):
        update = (m * beta1 + g * (1.0 - beta1)).sign()
        p.mul_(1.0 - lr * weight_decay).sub_(update * lr)
        m.mul_(beta2).add_(g * (1.0 - beta2))


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): ``p -= lr * sign(lerp(g, m, beta1))``, ``m = lerp(g, m, beta2)``; see the module doc.

    Args:
        params: tensors or param-group dicts.
        lr: step length per coordinate (default 1e-4); a float or a 0-dim tensor (see
            :func:`~trainlab.optim.shell.hyperparameter`).
        betas: (beta1, beta2): interpolation for the update sign and momentum decay (default (0.9, 0.99)).
        weight_decay: decoupled decay, ``p *= 1 - lr * weight_decay`` (default 0).
        foreach: the ``torch._foreach_*`` implementation (True), :func:`lion_reference` per tensor (False), or
                by device (None, default: foreach on CUDA; per tensor on CPU, where it measured faster).
        compile: run :func:`lion_fused` through ``torch.compile`` (default False): one fused pass per tensor,
                at the memory-bandwidth floor, after a one-off compilation (see :mod:`trainlab.optim.compiled`).
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, foreach: bool | None = None, compile: bool = False) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= b <= 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1])")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay, "foreach": foreach,
                                  "compile": compile})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group, params, grads in groups_with_grads(self):
            exp_avgs = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
            beta1, beta2 = group["betas"]
            lr = hyperparameter(group["lr"])
            if group.get("compile"):
                hyper = scalars((lr, beta1, beta2, group["weight_decay"]), params[0])
                compiled(lion_fused)(params, grads, exp_avgs, hyper)
                continue
            update = lion_foreach if use_foreach(group.get("foreach"), params) else lion_reference
            update(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2,
                   weight_decay=group["weight_decay"])
        return loss


@dataclass(frozen=True)
class LionOptions:
    lr: float = option(1e-4, ge=0.0, help="step length per coordinate (3-10x smaller than AdamW's)")
    betas: tuple[float, float] = option((0.9, 0.99), ge=0.0, le=1.0,
                                        help="beta1 interpolates the update's sign, beta2 decays the momentum")
    weight_decay: float = option(0.0, ge=0.0, help="decoupled: p *= 1 - lr * weight_decay (3-10x larger than AdamW's)")
    foreach: bool | None = option(None, help="torch._foreach_* path (true), per tensor (false); none: by device "
                                                "(foreach on CUDA, per tensor on CPU)")
    compile: bool = option(False, help="fused torch.compile kernel: at the memory floor after a one-off compile")


OPTIMIZERS.add("lion", Lion, options=LionOptions, summary="Sign of interpolated momentum (half AdamW's state)",
               source="trainlab", own=True, tensor_lr=True,
               paper="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms")
