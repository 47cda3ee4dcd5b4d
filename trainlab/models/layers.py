"""Small pieces shared by the models: activations by name and the ``init_scale`` helper.

Activations (see :data:`Activation`): ``relu``, ``gelu``, ``tanh``, ``silu``, ``identity`` (a deep *linear*
network, as in Saxe et al. 2014) and ``quadratic`` (``x ↦ x²``, the activation of Gromov's analytic solution
for modular addition and of several grokking studies).

``init_scale`` multiplies every parameter of a model by a constant after its ordinary initialisation. Values
above 1 give the large-initialisation regime in which Liu et al. ("Omnigrok", 2023) make grokking appear on
ordinary tasks; small values give the small-initialisation (rich, saddle-to-saddle) regime of Saxe et al.
(2014) for deep linear networks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["relu", "gelu", "tanh", "silu", "identity", "quadratic"]
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "tanh", "silu", "identity", "quadratic")


class Quadratic(nn.Module):
    """The elementwise square ``x ↦ x²``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x


def activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    key = name.lower()
    if key == "relu":
        return nn.ReLU()
    if key == "gelu":
        return nn.GELU()
    if key == "tanh":
        return nn.Tanh()
    if key == "silu":
        return nn.SiLU()
    if key == "identity":
        return nn.Identity()
    if key == "quadratic":
        return Quadratic()
    raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")


@torch.no_grad()
def scale_parameters_(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``module`` by ``scale`` in place (a no-op for ``scale == 1``); returns it.

    Shared (tied) parameters are scaled once.
    """
    if scale != 1.0:
        for p in module.parameters():  # .parameters() yields each shared tensor once
            p.mul_(scale)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())
