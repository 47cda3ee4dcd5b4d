"""Masks from weights: which entries (magnitude) or which units (neurons) to prune. Pure functions on tensors.

A mask is a bool tensor, True where the weight is kept. The counts follow ``torch.nn.utils.prune`` so that its
masks and these agree on the same tensors (tested): a fraction ``s`` of ``n`` entries prunes ``round(s * n)`` of
them (Python's rounding, half to even), the smallest first.

- :func:`magnitude_masks` -- Han et al. 2015: the entries of smallest |w|, in each layer (``scope="layer"``, as
  ``prune.l1_unstructured`` per tensor) or over all layers at once (``"global"``, as ``prune.global_unstructured``
  with ``L1Unstructured``).
- :func:`unit_masks` -- structured pruning (Liu et al. 2019, Li et al. 2017's filter pruning): the output units
  (rows of a Linear weight, output channels of a convolution) of smallest L2 or L1 norm of their incoming weights,
  per layer (as ``prune.ln_structured(dim=0)``) or over all layers (one ranking of every unit; raw norms, so layers
  with larger fan-in or weights lose fewer units).

- :func:`ipr_unit_masks` -- Doshi et al. 2024 ("To grok or not to grok"): the units of lowest inverse participation
  ratio of their weights' Fourier spectrum over the residues (:mod:`trainlab.probes.ipr`; one-hot modular inputs),
  the memorising ones, per layer.

Pruning never revives: entries (or units) already pruned in ``keep`` rank below every live one and stay pruned,
so a schedule's masks only shrink, and a layer already sparser than the target keeps its mask.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import Tensor

Scope = Literal["layer", "global"]


def count_to_prune(fraction: float, n: int) -> int:
    """How many of ``n`` entries a ``fraction`` prunes: ``round(fraction * n)``, as ``torch.nn.utils.prune``."""
    return round(fraction * n)


def magnitude_masks(weights: Mapping[str, Tensor], sparsity: float, scope: Scope,
                    keep: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Keep-masks pruning the fraction ``sparsity`` of the entries of ``weights`` with the smallest |w|.

    ``keep``: the current masks (entries already pruned stay pruned and are counted in the fraction)."""
    scores = {name: _scores(w.detach().abs(), None if keep is None else keep[name]) for name, w in weights.items()}
    if scope == "layer":
        return {name: _smallest_pruned(s, count_to_prune(sparsity, s.numel())) for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    return _split(_smallest_pruned(flat, count_to_prune(sparsity, flat.numel())), scores)


def unit_norms(weight: Tensor, norm: Literal["l2", "l1"]) -> Tensor:
    """The norm of each output unit's incoming weights: over every dimension of ``weight`` but the first."""
    dims = tuple(range(1, weight.dim()))
    return torch.linalg.vector_norm(weight.detach(), ord=2 if norm == "l2" else 1, dim=dims)


def unit_masks(weights: Mapping[str, Tensor], sparsity: float, scope: Scope, norm: Literal["l2", "l1"],
               keep: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per weight, a keep-mask of its output units (a bool vector of ``weight.shape[0]``) pruning the fraction
    ``sparsity`` of the units with the smallest weight norm.

    ``keep``: the current unit masks (units already pruned stay pruned and are counted in the fraction)."""
    scores = {name: _scores(unit_norms(w, norm), None if keep is None else keep[name]) for name, w in weights.items()}
    if scope == "layer":
        return {name: _largest_kept(s, s.numel() - count_to_prune(sparsity, s.numel())) for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    return _split(_smallest_pruned(flat, count_to_prune(sparsity, flat.numel())), scores)


def ipr_unit_masks(weights: Mapping[str, Tensor], sparsity: float, p: int, blocks: int = 2,
                   keep: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per weight ``(units, blocks·p)`` (a first layer reading ``blocks`` concatenated one-hot codes of ``p``
    residues), a keep-mask of its units pruning the fraction ``sparsity`` with the lowest IPR (r = 2,
    :func:`trainlab.probes.ipr.neuron_ipr`), each layer on its own.

    A live unit with an all-zero block (IPR NaN: it reads nothing of that operand) ranks lowest, above the pruned
    ones. ``keep``: the current unit masks (units already pruned stay pruned and are counted in the fraction).
    COST: one FFT of length p per unit and block."""
    from trainlab.probes.ipr import neuron_ipr  # here, not at the top: trainlab.prune need not load every probe

    out = {}
    for name, w in weights.items():
        score = _scores(neuron_ipr(w, p, blocks).nan_to_num(0.0), None if keep is None else keep[name])
        out[name] = _largest_kept(score, score.numel() - count_to_prune(sparsity, score.numel()))
    return out


def _scores(score: Tensor, keep: Tensor | None) -> Tensor:
    """``score`` (>= 0) with the pruned entries of ``keep`` set to -1: below every live one."""
    return score if keep is None else score.masked_fill(~keep, -1.0)


def _smallest_pruned(scores: Tensor, k: int) -> Tensor:
    """A keep-mask of the shape of ``scores`` with its ``k`` smallest entries pruned (ties: topk's choice, as
    ``prune.L1Unstructured``), and every entry scored -1 (already pruned) pruned whatever ``k``."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        mask.view(-1)[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = False
    return mask & (scores >= 0)


def _largest_kept(scores: Tensor, k: int) -> Tensor:
    """A keep-mask keeping the ``k`` largest entries of the vector ``scores`` (as ``prune.LnStructured``), and no
    entry scored -1."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(scores, k=k, largest=True).indices] = True
    return mask & (scores >= 0)


def _split(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The flat mask ``flat`` cut back into tensors of the shapes of ``like``, in its order."""
    out, at = {}, 0
    for name, t in like.items():
        out[name] = flat[at:at + t.numel()].view(t.shape)
        at += t.numel()
    return out
