"""Which parameters pruning may zero: the weights of Linear and convolution layers, but the output head's.

The head is left dense for two reasons: its outputs are the task's classes (or regression targets), so it has
no units to remove in structured pruning, and at high sparsity magnitude pruning could empty a class's whole row,
making that class unpredictable whatever the rest of the network learns. It is also a small share of the weights
(Frankle & Carbin 2019 prune it at half the rate of the other layers; Liu et al. 2019 never prune it). Biases,
normalisation layers and embeddings are not pruned by magnitude (few parameters, and zeroing a norm's scale or a
token's embedding removes far more than one connection); structured pruning zeroes the bias and BatchNorm entries
of a removed unit together with its weights (:attr:`PrunableLayer.companions`), so the unit outputs exactly 0.

The head is the module named ``head`` (every trainlab model has one: ``model.head``); a model without one has its
last Linear or convolution taken as the head. Parameters are named as in ``model.named_parameters()`` of the
plain module the trainer checkpoints (``body.fc0.weight``; ``model.body.fc0.weight`` under
``param.output_scale``, whose frozen reference copy holds buffers, not parameters, and is never pruned).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

PRUNABLE_TYPES = (nn.Linear, _ConvNd)


@dataclass(frozen=True)
class PrunableLayer:
    """One layer whose weight may be pruned."""

    module: str  # the module's name, e.g. "body.fc0"
    weight: str  # its weight parameter, e.g. "body.fc0.weight": (units, fan-in...) for Linear and convolutions
    # parameters with one entry per output unit, zeroed with the unit by structured pruning: the layer's bias and
    # the affine weight and bias of a BatchNorm right after it
    companions: tuple[str, ...] = ()


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The layers of ``model`` whose weights pruning may zero, in module order (see the module doc)."""
    params = {id(p): name for name, p in model.named_parameters()}
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, PRUNABLE_TYPES) and id(m.weight) in params]
    heads = [name for name, _ in candidates if name.rpartition(".")[2] == "head"]
    if not heads and candidates:
        heads = [candidates[-1][0]]
    following = _following_norms(model)
    layers = []
    for name, m in candidates:
        if name in heads:
            continue
        companions = []
        if m.bias is not None and id(m.bias) in params:
            companions.append(params[id(m.bias)])
        norm = following.get(id(m))
        if norm is not None:
            companions += [params[id(p)] for p in (norm.weight, norm.bias) if p is not None and id(p) in params]
        layers.append(PrunableLayer(name, params[id(m.weight)], tuple(companions)))
    return layers


def _following_norms(model: nn.Module) -> dict[int, _BatchNorm]:
    """Layer id -> the BatchNorm that comes right after it in a Sequential and normalises its outputs."""
    out: dict[int, _BatchNorm] = {}
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        for layer, nxt in zip(children, children[1:]):
            if isinstance(layer, PRUNABLE_TYPES) and isinstance(nxt, _BatchNorm) and nxt.affine \
                    and nxt.num_features == layer.weight.shape[0]:
                out[id(layer)] = nxt
    return out
