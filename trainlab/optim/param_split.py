"""Which parameters an orthogonalising optimizer updates as matrices, and which go to an element-wise one.

Muon (Jordan et al. 2024) orthogonalises the updates of *hidden* weight matrices only; the reference
(KellerJordan/Muon ``MuonWithAuxAdam``, and the CIFAR-10 speedrun for convolutions) hands the rest to AdamW:

- every parameter with fewer than 2 dimensions (biases, LayerNorm/BatchNorm gains, scalars);
- embedding tables (:class:`torch.nn.Embedding`, :class:`torch.nn.EmbeddingBag`): their gradient is a sum
  of one-hot rows, not a dense linear map;
- the output head: the module registered on the model as ``head`` (trainlab's MLP, ConvNet and Transformer
  all have one), or, when the model has no ``head`` attribute, the last :class:`torch.nn.Linear` in
  registration order;
- the first convolution (its fan-in is the few input channels times the kernel: a poor fit for
  orthogonalisation, and the speedrun trains it separately).

Everything else with ``ndim >= 2`` (Linear weights, conv filters, which Muon reshapes to
``(out, in·kh·kw)``) goes to Muon. A weight tied to an embedding or head (``tie_embeddings``) follows that
role: it appears once, under its first name, on the AdamW side.

Overrides (``rules``):

- a string: a regular expression; parameters whose *name* it matches (``re.search``) go to AdamW in addition
  to the defaults (Muon's ``muon_exclude`` option), e.g. ``"attn"`` or ``"^body\\.fc0\\."``;
- a function ``rule(name, param) -> bool | None``: True sends the parameter to Muon, False to AdamW, None
  keeps the default decision (a function that sends a 1-D tensor to Muon is refused).

``explain(model)`` lists every parameter with its side and the reason, for logs and tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Union

from torch import nn

Rule = Union[str, Callable[[str, nn.Parameter], bool | None], None]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _head_module(model: nn.Module) -> nn.Module | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def default_roles(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> reason`` for every parameter that the default rules send to AdamW."""
    roles: dict[int, str] = {}
    head = _head_module(model)
    first_conv = next((m for m in model.modules() if isinstance(m, _CONVS)), None)
    for module in model.modules():
        role = None
        if isinstance(module, _EMBEDDINGS):
            role = "embedding"
        elif head is not None and module is head:
            role = "output head"
        elif first_conv is not None and module is first_conv:
            role = "first conv"
        if role is not None:
            for p in module.parameters(recurse=role == "output head"):
                if p.ndim >= 2:
                    roles.setdefault(id(p), role)
    return roles


def explain(model: nn.Module, rules: Rule = None) -> list[tuple[str, str, str]]:
    """``(name, "muon" | "adamw", reason)`` for every parameter (shared ones once, under their first name)."""
    roles = default_roles(model)
    pattern = re.compile(rules) if isinstance(rules, str) and rules else None
    rows = []
    for name, p in model.named_parameters():
        if p.ndim < 2:
            default, reason = False, ("bias" if name.endswith("bias") else "gain" if p.ndim == 1 else "scalar")
        elif id(p) in roles:
            default, reason = False, roles[id(p)]
        else:
            default, reason = True, "hidden matrix" if p.ndim == 2 else "hidden conv filter"
        side = default
        if pattern is not None and pattern.search(name):
            side, reason = False, f"matches muon_exclude {rules!r}"
        elif callable(rules):
            decision = rules(name, p)
            if decision is not None:
                if decision and p.ndim < 2:
                    raise ValueError(f"split rule sends {name} (shape {tuple(p.shape)}) to Muon, "
                                     "which updates matrices only")
                side, reason = bool(decision), "user rule"
        rows.append((name, "muon" if side else "adamw", reason))
    return rows


def split(model: nn.Module, rules: Rule = None) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """``(muon, adamw)``: two ordered ``name -> parameter`` dicts covering every parameter of ``model`` once.

    Frozen parameters (``requires_grad=False``) are left out of both.
    """
    params = dict(model.named_parameters())
    muon: dict[str, nn.Parameter] = {}
    adam: dict[str, nn.Parameter] = {}
    for name, side, _ in explain(model, rules):
        if params[name].requires_grad:
            (muon if side == "muon" else adam)[name] = params[name]
    return muon, adam
