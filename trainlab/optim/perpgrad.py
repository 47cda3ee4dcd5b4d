"""⊥Grad / PerpGrad (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability"), a wrapper.

Before the base optimizer's step, each parameter tensor's gradient is made orthogonal to the tensor itself
and rescaled to its original norm. With ``w`` and ``g`` the flattened parameter and gradient::

    g_perp = g - (w·g) / (w·w + 1e-30) * w
    g     <- g_perp * ||g|| / (||g_perp|| + 1e-30)
    base optimizer step (any registry optimizer; default ``adamw``)

The component of ``g`` along ``w`` only scales the weights up or down (in the paper's analysis it grows the
logits until the softmax collapses and learning stops: "naive loss minimisation"); removing it lets
grokking happen without weight decay. Units and defaults are the base optimizer's (e.g. ⊥AdamW with lr 1e-2,
weight_decay 0 for the paper's a+b mod 113 MLP anchor); the wrapper adds no hyperparameter.

Implementation notes and deviations from the paper's code (``LucasPrietoAl/grokking-at-the-edge-of-numerical-
stability``, ``orthograd.py``), both shared with ``pytorch_optimizer.OrthoGrad`` (parity in
``tests/optim/test_perpgrad.py``):

- When ``g`` is parallel to ``w`` up to rounding (``||g_perp|| <= 4 * machine_eps * ||g||``; always the case
  for a one-element tensor), the gradient is set to 0: the paper's formula would rescale pure rounding noise
  to the full gradient norm.
- float16/bfloat16 tensors are projected in float32 (the dot products would lose too much in 16 bits); the
  result is written back in the gradient's dtype. float32/float64 are computed in their own dtype.

The gradients are modified in place (as in both references), so ``p.grad`` after ``step()`` holds the
projected gradient. Built through :class:`~trainlab.optim.wrappers.GradientTransformWrapper`: every base
option is kept, and ``state_dict`` is the base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.compiled import compiled
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import use_foreach
from trainlab.optim.wrappers import GradientTransformWrapper

EPS = 1e-30


def _compute_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def perpendicular_reference(params: list[Tensor], grads: list[Tensor]) -> None:
    """Replace each gradient by its part orthogonal to its parameter, rescaled to the gradient's norm."""
    for p, grad in zip(params, grads):
        dtype = _compute_dtype(p)
        w, g = p.reshape(-1).to(dtype), grad.reshape(-1).to(dtype)
        g_perp = g - torch.dot(w, g) / (torch.dot(w, w) + EPS) * w
        g_norm, perp_norm = torch.linalg.vector_norm(g), torch.linalg.vector_norm(g_perp)
        scale = torch.where(perp_norm <= 4 * torch.finfo(dtype).eps * g_norm, 0.0, g_norm / (perp_norm + EPS))
        grad.copy_((g_perp * scale).view_as(grad))


def perpendicular_foreach(params: list[Tensor], grads: list[Tensor]) -> None:
    """The same transform as :func:`perpendicular_reference` with ``torch._foreach_*`` ops."""
    ws = [p.reshape(-1).to(_compute_dtype(p)) for p in params]
    gs = [g.reshape(-1).to(_compute_dtype(g)) for g in grads]
    dots = [x.sum() for x in torch._foreach_mul(ws, gs)]
    sq_norms = [x.sum() for x in torch._foreach_mul(ws, ws)]
    torch._foreach_add_(sq_norms, EPS)
    projections = torch._foreach_div(dots, sq_norms)
    perps = torch._foreach_mul(ws, projections)
    torch._foreach_neg_(perps)
    torch._foreach_add_(perps, gs)
    g_norms, perp_norms = torch._foreach_norm(gs), torch._foreach_norm(perps)
    scales = [torch.where(pn <= 4 * torch.finfo(pn.dtype).eps * gn, 0.0, gn / (pn + EPS))
              for gn, pn in zip(g_norms, perp_norms)]
    torch._foreach_mul_(perps, scales)
    torch._foreach_copy_(grads, [x.view_as(g) for x, g in zip(perps, grads)])


def perpendicular_fused(params: list[Tensor], grads: list[Tensor]) -> None:
    """The same transform as :func:`perpendicular_reference` for ``torch.compile``: Inductor reads w and g once
    for the three reductions (w·g, w·w, g·g; ||g_perp||² = g·g - 2c w·g + c² w·w with c = w·g / w·w, so the
    projected gradient is never materialised before its norm is known) and once more to write g."""
    for p, grad in zip(params, grads):
        dtype = _compute_dtype(p)
        w, g = p.reshape(-1).to(dtype), grad.reshape(-1).to(dtype)
        wg, ww, gg = (w * g).sum(), (w * w).sum(), (g * g).sum()
        c = wg / (ww + EPS)
        perp_norm = (gg - 2 * c * wg + c * c * ww).clamp(min=0.0).sqrt()
        g_norm = gg.sqrt()
        scale = torch.where(perp_norm <= 4 * torch.finfo(dtype).eps * g_norm, 0.0, g_norm / (perp_norm + EPS))
        grad.copy_(((g - c * w) * scale).view_as(grad))


class PerpGrad(GradientTransformWrapper):
    """⊥Grad (Prieto et al. 2025): step the base optimizer on gradients orthogonal to the weights.

    Args:
        params: tensors or param-group dicts.
        base: registry name or class of the base optimizer (default ``"adamw"``: ⊥AdamW).
        foreach: ``torch._foreach_*`` form of the projection (True), :func:`perpendicular_reference` (False), or
                by device (None, default: foreach on CUDA only).
        compile_projection: run :func:`perpendicular_fused` through ``torch.compile`` (default False; a one-off
                compilation, see :mod:`trainlab.optim.compiled`). The base's own kernel is chosen by its options.
        **base_options: the base optimizer's options (``lr``, ``betas``, ``weight_decay``, ...).
    """

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer] = "adamw", *, foreach: bool | None = None,
                 compile_projection: bool = False, **base_options: Any) -> None:
        super().__init__(params, base, foreach=foreach, **base_options)
        self.compile_projection = compile_projection

    def transform_(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        if self.compile_projection:
            compiled(perpendicular_fused)(params, grads)
        else:
            (perpendicular_foreach if use_foreach(self.foreach, params) else perpendicular_reference)(params, grads)


@dataclass(frozen=True)
class PerpGradOptions:
    base: str = option("adamw", help="registry name of the base optimizer stepped on the orthogonal gradients "
                                     "(its options follow, e.g. optimizer.lr)")
    compile_projection: bool = option(False, help="fused torch.compile kernel for the projection (a one-off "
                                                  "compile; the base's kernel follows its own options)")


OPTIMIZERS.add("perpgrad", PerpGrad, options=PerpGradOptions,
               summary="⊥Grad: gradient orthogonal to the weights, rescaled, then any base optimizer",
               source="trainlab", own=True, wrapper=True, tensor_lr=True,
               paper="Prieto et al. 2025, Grokking at the Edge of Numerical Stability")
