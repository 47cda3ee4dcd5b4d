"""The diagonal of a classifier's Fisher information, per example (EWC's and refresh learning's importance).

``F = (1/N) Σ_n w_n (∂ log p(y_n | x_n; θ) / ∂θ)²``, elementwise, over ``N`` examples ``x_n`` with labels ``y_n``
and weights ``w_n``: with ``y_n`` drawn from the model's own ``p(· | x_n)`` and ``w_n = 1`` it is an unbiased
estimate of the Fisher's diagonal (EWC); with the true labels it is the *empirical* Fisher, which refresh
learning's reference code weights by ``w_n = p(y_n | x_n)``.

One backward pass per example (the square of a batch's mean gradient is not the mean of the squares), so its
cost is ``N`` forward-backward passes of one example. The model is read in eval mode (no dropout noise in the
Fisher of the trained network) and left in the mode it was in.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from trainlab.continual.methods.base import parameters


def log_likelihoods(logits: Tensor) -> Tensor:
    """``log p(y | x)`` for every class (float32 at least; classes masked out, at -inf logits, stay at -inf)."""
    return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)


def diagonal_fisher(model: nn.Module, logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *,
                    weighted: bool = False) -> dict[str, Tensor]:
    """``(1/N) Σ_n w_n (∇_θ log p(y_n | x_n))²`` for each trainable parameter of ``model`` (by name), where
    ``logits(x)`` are the model's logits for a batch ``x``; ``w_n = p(y_n | x_n)`` when ``weighted``, else 1."""
    params = parameters(model)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for n in range(len(x)):
            log_p = log_likelihoods(logits(x[n:n + 1]))[0, y[n]]
            grads = torch.autograd.grad(log_p, list(params.values()), allow_unused=True)
            weight = log_p.detach().exp() if weighted else 1.0
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:  # a parameter this task's logits do not use (none in the bundled models)
                    fisher[name] += weight * grad.square()
    finally:
        model.train(was_training)
    return {name: f / max(len(x), 1) for name, f in fisher.items()}


def sampled_labels(model: nn.Module, logits: Callable[[Tensor], Tensor], x: Tensor,
                   generator: torch.Generator) -> Tensor:
    """One label per row of ``x`` drawn from the model's ``p(· | x)`` (eval mode), with ``generator`` (CPU)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = log_likelihoods(logits(x)).exp().double().cpu()
    finally:
        model.train(was_training)
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(x.device)
