"""AGD: automatic gradient descent, a learning-rate-free optimizer for bias-free networks.

Paper: Bernstein, Mingard, Huang, Azizan & Yue (2023), "Automatic Gradient Descent: Deep Learning without
Hyperparameters" (arXiv:2304.05187). Reference: jxbz/agd (``agd.py``).

For the ``L`` weight tensors ``W_k`` of shape ``(d_k, d_{k-1})`` (a conv ``(out, in, *k)``: per kernel
position), with ``σ_k = sqrt(d_k/d_{k-1})`` (conv: ``sqrt(out/in)/sqrt(Πk)``), one step is::

    G = (1/L) Σ_k σ_k·||∇W_k||_F                    (conv: the per-position norms summed)
    η = log((1 + sqrt(1 + 4G)) / 2)
    W_k ← W_k - gain·(η/L)·σ_k·∇W_k / ||∇W_k||_F   (conv: each position normalised by its own norm)

Initialisation (:func:`agd_init_`): each weight (conv: each kernel position) orthogonal, times ``σ_k``.
**Building the optimizer with a model applies this initialisation to the model's weights** (as the
reference's ``AGD.init_weights`` does; AGD's step sizes assume it). Building it from plain tensors leaves
them as they are.

Options: ``gain`` only (default 1; the paper notes 10 can be faster). There is no learning rate. The single
param group carries ``lr = 1.0`` which multiplies the step: the trainer sets ``lr = 1.0 · schedule(step)``, so
the default constant schedule gives AGD exactly, and a schedule (e.g. a final decay) scales AGD's own step.

Supported: networks whose parameters are all weights of bias-free :class:`~torch.nn.Linear` and
``Conv1d/2d/3d`` layers (e.g. ``model=mlp model.bias=false``). Biases, affine normalisation layers
(LayerNorm, BatchNorm with parameters) and embeddings raise a :class:`~trainlab.config.ConfigError` naming the
parameter. The paper's losses are MSE and cross-entropy; the optimizer itself does not check the loss.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def singular_value(shape: Sequence[int]) -> float:
    """``σ = sqrt(out/in)``, divided by ``sqrt(Πk)`` for a conv of kernel ``k``."""
    sv = math.sqrt(shape[0] / shape[1])
    return sv / math.sqrt(math.prod(shape[2:]))


def _position_norms(g: Tensor, keepdim: bool = False) -> Tensor:
    """Frobenius norm of each kernel position's ``(out, in)`` slice (a scalar for a matrix)."""
    return torch.linalg.vector_norm(g, dim=(0, 1), keepdim=keepdim)


def agd_update(grads: Sequence[Tensor], gain: float = 1.0) -> tuple[list[Tensor], Tensor]:
    """``(updates, η)``: the AGD steps ``gain·(η/L)·σ_k·∇W_k/||∇W_k||_F`` to *subtract*, and η (a tensor).

    A zero gradient (or zero kernel position) gives a zero step there.
    """
    L = len(grads)
    # reduce rather than sum(): a sum of tensors starting from int 0 is typed Tensor | int (same values)
    G = functools.reduce(operator.add, [singular_value(g.shape) * _position_norms(g).sum() for g in grads]) / L
    eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
    updates = [g * (gain * eta / L * singular_value(g.shape) / _position_norms(g, keepdim=True).clamp_min(1e-30))
               for g in grads]
    return updates, eta


def check_supported(model: nn.Module) -> None:
    """Raise :class:`ConfigError` naming the first parameter AGD cannot handle."""
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _EMBEDDINGS):
                raise ConfigError("optimizer", f"agd: model has an embedding ({name}); AGD supports bias-free Linear and "
                                      "Conv layers only (no embeddings, biases or affine norms)")
            if isinstance(module, _NORMS):
                raise ConfigError("optimizer", f"agd: model has a normalisation layer with parameters ({name}); AGD "
                                      "supports only parameter-free normalisation (elementwise_affine/affine off, "
                                      "or model.layernorm=false)")
            if isinstance(module, (nn.Linear, *_CONVS)) and p_name == "bias":
                hint = ("the bundled CNNs always have conv biases" if isinstance(module, _CONVS)
                        else "use model.bias=false")
                raise ConfigError("optimizer", f"agd: model has a bias ({name}); {hint}")
            if not (isinstance(module, (nn.Linear, *_CONVS)) and p_name == "weight"):
                raise ConfigError("optimizer", f"agd: unsupported parameter {name} of {type(module).__name__} "
                                      f"(shape {tuple(p.shape)}); AGD supports bias-free Linear and Conv weights only")


@torch.no_grad()
def agd_init_(model: nn.Module) -> nn.Module:
    """AGD's initialisation in place: each weight orthogonal (conv: per kernel position) times ``σ``."""
    check_supported(model)
    for p in model.parameters():
        if p.ndim == 2:
            nn.init.orthogonal_(p)
        else:
            flat = p.view(p.shape[0], p.shape[1], -1)
            for k in range(flat.shape[-1]):
                slice_ = torch.empty(p.shape[0], p.shape[1], dtype=p.dtype, device=p.device)
                nn.init.orthogonal_(slice_)
                flat[:, :, k].copy_(slice_)
        p.mul_(singular_value(p.shape))
    return model


class AGD(torch.optim.Optimizer):
    """Automatic gradient descent (see the module docstring).

    Args:
        params (iterable): the network's weight tensors (ndim >= 2), all of them: ``L`` counts them.
        gain (float): multiplies every step (default: 1).
    """

    def __init__(self, params: Iterable[Any], gain: float = 1.0) -> None:
        if gain < 0:
            raise ValueError(f"agd: gain must be >= 0, got {gain}")
        super().__init__(params, {"gain": gain, "lr": 1.0})
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])
            for i, p in enumerate(group["params"]):
                if p.ndim < 2:
                    raise ConfigError("optimizer", f"agd: parameter {i} has shape {tuple(p.shape)}; AGD updates weight "
                                          "matrices and conv filters only (no biases or gains)")
        self.last_eta: Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        params = [p for group in self.param_groups for p in group["params"]]
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return loss
        # L is the number of weight tensors of the network, including any without a gradient this step.
        zeros = {id(p): torch.zeros_like(p) for p in params if p.grad is None}
        grads = [p.grad if p.grad is not None else zeros[id(p)] for p in params]
        updates, self.last_eta = agd_update(grads, gain=1.0)
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(updates[i], alpha=group["gain"] * group["lr"])
                i += 1
        return loss


@dataclass(frozen=True)
class AGDOptions:
    gain: float = option(1.0, ge=0.0, help="multiplies every step (the paper notes 10 can be faster); no lr")


def build_agd(params: Any, gain: float = 1.0) -> AGD:
    """AGD over a model (checked, then initialised in place by :func:`agd_init_`) or over weight tensors."""
    if isinstance(params, nn.Module):
        agd_init_(params)
        params = params.parameters()
    return AGD(params, gain=gain)


OPTIMIZERS.add(
    "agd", build_agd, options=AGDOptions,
    summary="Automatic gradient descent: no learning rate; bias-free Linear/Conv networks; re-initialises the model",
    source="trainlab.optim.agd", own=True, needs_model=True,
    paper="Bernstein et al. 2023, Automatic Gradient Descent: Deep Learning without Hyperparameters",
)
