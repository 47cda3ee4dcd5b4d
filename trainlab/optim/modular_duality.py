"""Modular dualisation: steepest descent in the modular norm, one duality map per layer type.

Papers: Bernstein & Newhouse (2024), "Modular Duality in Deep Learning" (arXiv:2410.21265); Large, Liu,
Golikov, Sun, ..., Bernstein (2024), "Scalable Optimization in the Modular Norm" (arXiv:2405.14813).
Reference: modula-systems/modula (``Linear.dualize``, ``Embed.dualize``, composition of mass and sensitivity).

A gradient is a *dual* vector; it is mapped to an update of the size the layer's norm allows (its *target
norm* ``t``) before it is applied::

    buf ← lerp(buf, g, 1-β)                 EMA of gradients (β = momentum; the map is scale-free, so no
                                              bias correction is needed)
    Δ   = dualize(buf, t)                     per layer type, below
    W   ← W·(1 - lr·wd) - lr·Δ

Duality maps (``t`` the layer's target norm):

- **Linear** ``(out, in)``: ``orthogonalize(G)·sqrt(out/in)·t``: spectral norm ``sqrt(out/in)·t`` (the
  spectral condition of Yang, Simon & Bernstein: an input of RMS 1 moves the output by RMS ≈ t).
- **Embedding** ``(num, d)``: each row (one token's vector) ``G_i / ||G_i||₂ · sqrt(d) · t``: RMS ``t`` per
  row; rows with zero gradient (tokens absent from the batch) give 0, not nan.
- **Conv1d/Conv2d/Conv3d** ``(out, in, *k)``: each kernel position's ``(out, in)`` slice like a Linear,
  divided by the number of positions ``K = Πk`` (``k`` for Conv1d, ``kh·kw`` = k² for a square Conv2d): the
  conv is a sum of ``K`` shifted linear maps, so by the triangle inequality its operator norm on one input
  location is at most ``sqrt(out/in)·t`` (trainlab's convention; modula writes 1/k² for a k×k kernel).
- **Vectors** (biases, LayerNorm/BatchNorm gains and shifts, any 1-D or 0-D parameter):
  ``g / ||g||₂ · sqrt(numel) · t``, an update of RMS ``t``. A Linear's bias belongs to the Linear's atom with
  the norm ``max(sqrt(in/out)·||W||₂, RMS(b))``, whose dual map gives both parts the full target.
  (The papers treat bias-free networks; this is trainlab's choice, in the same units.)
- Other modules: 2-D parameters as Linear, higher-dimensional as Conv, 1-D/0-D as vectors.

Target norms (mass and sensitivity): every module that owns parameters is an *atom* with mass 1 and
sensitivity 1 (defaults); parameter-free modules (activations, pooling, dropout) are bonds with mass 0 and
sensitivity 1. For a composition ``M1∘M0``, mass ``m0 + m1``, sensitivity ``s0·s1``, and a target ``t`` is
split as ``t·m0/M/s1`` for ``M0`` and ``t·m1/M`` for ``M1`` (:func:`target_norms` applies this along a chain).
trainlab reads a model as the chain of its atoms in registration order: exact for the MLP and ConvNets
(sequential), an approximation for the transformer (whose residual sums would give other splits). With the
defaults every atom gets ``t/L`` for ``L`` atoms.

Defaults: lr 0.1 (the update's modular norm: the whole network moves by ``lr`` in the modular norm each step;
modula's examples use 0.1–0.5 with linear decay), momentum 0.9, weight decay 0, total target 1, 5 quintic
Newton–Schulz steps (bf16 on CUDA, float32 on CPU). Matrices of equal shape (Linear weights and conv
slices alike) are orthogonalised in one batched call.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.optim.newton_schulz import orthogonalize, orthogonalize_exact
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure, hyperparameter

Kind = Literal["linear", "conv", "embedding", "vector"]
_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


# -------------------------------------------------------------------------------------------------------
# Duality maps


def _orth(G: Tensor, exact: bool, ns: dict[str, Any]) -> Tensor:
    return orthogonalize_exact(G) if exact else orthogonalize(G, **ns)


def dualize_linear(G: Tensor, target: float, *, exact: bool = False, **ns: Any) -> Tensor:
    """``orthogonalize(G)·sqrt(out/in)·target`` for a ``(out, in)`` weight gradient (``ns``: Newton–Schulz
    keywords ``coefficients``, ``steps``, ``dtype``; ``exact``: SVD instead)."""
    out_f, in_f = G.shape[-2:]
    return _orth(G, exact, ns) * (math.sqrt(out_f / in_f) * target)


def dualize_conv(G: Tensor, target: float, *, exact: bool = False, **ns: Any) -> Tensor:
    """Per kernel position like :func:`dualize_linear`, divided by the number of positions ``K``."""
    out_c, in_c = G.shape[:2]
    k = math.prod(G.shape[2:])
    slices = G.reshape(out_c, in_c, k).permute(2, 0, 1)  # (K, out, in)
    O = _orth(slices, exact, ns) * (math.sqrt(out_c / in_c) * target / k)
    return O.permute(1, 2, 0).reshape(G.shape)


def dualize_embedding(G: Tensor, target: float) -> Tensor:
    """Each row ``G_i / ||G_i||₂ · sqrt(d) · target``; zero rows stay zero."""
    d = G.shape[-1]
    out = G / torch.linalg.vector_norm(G, dim=-1, keepdim=True) * (math.sqrt(d) * target)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def dualize_vector(G: Tensor, target: float) -> Tensor:
    """``G / ||G||₂ · sqrt(numel) · target`` (RMS ``target``); a zero gradient stays zero."""
    out = G / torch.linalg.vector_norm(G) * (math.sqrt(G.numel()) * target)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def param_kind(module_kind: str, p: Tensor) -> Kind:
    """How a parameter of a module of ``module_kind`` is dualised."""
    if p.ndim < 2:
        return "vector"
    if module_kind == "embedding":
        return "embedding"
    return "linear" if p.ndim == 2 else "conv"


def dualize(G: Tensor, kind: str, target: float, *, exact: bool = False, **ns: Any) -> Tensor:
    """The duality map of ``kind`` (linear, conv, embedding, vector) applied to one gradient."""
    if kind == "linear":
        return dualize_linear(G, target, exact=exact, **ns)
    if kind == "conv":
        return dualize_conv(G, target, exact=exact, **ns)
    if kind == "embedding":
        return dualize_embedding(G, target)
    if kind == "vector":
        return dualize_vector(G, target)
    raise ValueError(f"unknown duality map {kind!r}; allowed: linear, conv, embedding, vector")


# -------------------------------------------------------------------------------------------------------
# Mass and sensitivity


@dataclass(frozen=True)
class Atom:
    """A module that owns parameters: its name, kind of module, mass and sensitivity."""

    name: str
    module_kind: str
    params: tuple[nn.Parameter, ...]
    mass: float = 1.0
    sensitivity: float = 1.0


def target_norms(masses: Sequence[float], sensitivities: Sequence[float] | None = None,
                 target: float = 1.0) -> list[float]:
    """Target norms of the modules of the chain ``M_{n-1} ∘ … ∘ M_1 ∘ M_0`` (``M_0`` applied first).

    Folds the composition rule: ``M1∘M0`` has mass ``m0 + m1`` and sensitivity ``s0·s1``; ``M0`` gets
    ``t·m0/M/s1`` and ``M1`` gets ``t·m1/M``. Module ``k`` ends up with ``t·m_k/M/Π_{j>k} s_j``. Modules of
    mass 0 get 0.
    """
    n = len(masses)
    sens = list(sensitivities) if sensitivities is not None else [1.0] * n
    if len(sens) != n:
        raise ValueError(f"{n} masses but {len(sens)} sensitivities")
    out = [0.0] * n

    def assign(end: int, t: float) -> None:  # split t over the prefix chain masses[:end]
        if end == 1:
            out[0] = t if masses[0] > 0 else 0.0
            return
        m0, m1 = sum(masses[:end - 1]), masses[end - 1]
        total = m0 + m1
        if total <= 0:
            return
        out[end - 1] = t * m1 / total
        assign(end - 1, t * m0 / total / sens[end - 1])

    if n:
        assign(n, target)
    return out


def atoms(model: nn.Module) -> list[Atom]:
    """The modules of ``model`` that own parameters, in registration order (shared parameters once)."""
    seen: set[int] = set()
    found = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen and p.requires_grad]
        if not own:
            continue
        seen.update(id(p) for p in own)
        kind = ("linear" if isinstance(module, nn.Linear) else "conv" if isinstance(module, _CONVS)
                else "embedding" if isinstance(module, _EMBEDDINGS) else "other")
        found.append(Atom(name or "(root)", kind, tuple(own)))
    return found


# -------------------------------------------------------------------------------------------------------
# Optimizer


class Dualized(torch.optim.Optimizer):
    """Modular-norm steepest descent with EMA momentum (see the module docstring).

    Each param group is one atom: ``{"params", "atom", "module_kind", "target", "lr", ...}``.

    Args:
        params (iterable): param-group dicts with ``module_kind`` and ``target``, or tensors (each its own
            atom of mass 1, dualised by its number of dimensions).
        lr (float or Tensor): learning rate, in units of the modular norm (default: 0.1).
        momentum (float): EMA coefficient of the gradient buffer (default: 0.9).
        weight_decay (float): decoupled weight decay (default: 0).
        ns_coefficients (str): Newton–Schulz coefficient set (default: quintic).
        ns_steps (int): Newton–Schulz iterations (default: 5).
        ns_dtype (str): auto, bfloat16 or float32 (default: auto).
        exact (bool): orthogonalise by SVD instead of Newton–Schulz (default: False).
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, ns_coefficients: str = "quintic", ns_steps: int = 5,
                 ns_dtype: str = "auto", exact: bool = False) -> None:
        params = list(params)
        if params and isinstance(params[0], Tensor):  # plain tensors: each its own atom, equal shares
            share = 1.0 / len(params)
            params = [{"params": [p], "atom": f"param{i}", "module_kind": "other", "target": share}
                      for i, p in enumerate(params)]
        if ns_dtype not in _DTYPES:
            raise ValueError(f"dualized: ns_dtype must be one of {', '.join(_DTYPES)}, got {ns_dtype!r}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_coefficients": ns_coefficients,
                    "ns_steps": ns_steps, "ns_dtype": ns_dtype, "exact": exact, "module_kind": "other", "target": 1.0}
        super().__init__(params, defaults)
        for group in self.param_groups:  # a copy of a tensor lr, as torch's LRScheduler keeps it
            group.setdefault("initial_lr", group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        # (param, group, kind, buffer) for every parameter with a gradient; matrices batched by shape.
        items: list[tuple[Tensor, dict[str, Any], str, Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("dualized: sparse gradients are not supported")
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                items.append((p, group, param_kind(group["module_kind"], p), buf))
        orth = self._orthogonalize_batched(items)
        for i, (p, group, kind, buf) in enumerate(items):
            t = group["target"]
            if kind in ("linear", "conv"):
                out_f, in_f = p.shape[:2]
                k = math.prod(p.shape[2:])
                update = orth[i] * (math.sqrt(out_f / in_f) * t / k)
            else:
                update = dualize(buf, kind, t)
            lr = hyperparameter(group["lr"])
            if group["weight_decay"] != 0:
                p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr)
        return loss

    @staticmethod
    def _orthogonalize_batched(items: list[tuple[Tensor, dict[str, Any], str, Tensor]]) -> dict[int, Tensor]:
        """Orthogonalised buffers (shaped like the parameter) of the linear/conv items, one call per
        (matrix shape, Newton–Schulz settings)."""
        batches: dict[tuple, list[tuple[int, Tensor]]] = defaultdict(list)
        for i, (p, group, kind, buf) in enumerate(items):
            if kind not in ("linear", "conv"):
                continue
            out_f, in_f = p.shape[:2]
            slices = buf.reshape(out_f, in_f, -1).permute(2, 0, 1)  # (K, out, in); K = 1 for a Linear
            key = (out_f, in_f, group["ns_coefficients"], group["ns_steps"], group["ns_dtype"], group["exact"])
            batches[key].append((i, slices))
        result: dict[int, Tensor] = {}
        for (out_f, in_f, coefficients, steps, dtype, exact), members in batches.items():
            stacked = torch.cat([s for _, s in members])
            O = orthogonalize_exact(stacked) if exact else orthogonalize(stacked, coefficients, steps, _DTYPES[dtype])
            offset = 0
            for i, s in members:
                k = s.shape[0]
                result[i] = O[offset:offset + k].permute(1, 2, 0).reshape(items[i][0].shape)
                offset += k
        return result


@dataclass(frozen=True)
class DualizedOptions:
    lr: float = option(0.1, ge=0.0, help="learning rate in modular-norm units (the whole network's step size)")
    momentum: float = option(0.9, ge=0.0, lt=1.0, help="EMA coefficient of the gradient before dualisation")
    weight_decay: float = option(0.0, ge=0.0, help="decoupled weight decay: W ← W·(1 - lr·wd)")
    ns_coefficients: Literal["quintic", "tuned", "you", "polar_express"] = option(
        "quintic", help="Newton–Schulz coefficient set")
    ns_steps: int = option(5, ge=1, le=99, help="Newton–Schulz iterations")
    ns_dtype: Literal["auto", "bfloat16", "float32"] = option(
        "auto", help="Newton–Schulz precision (auto: bfloat16 on CUDA, float32 on CPU)")
    exact: bool = option(False, help="orthogonalise by SVD (slow; for checks on small models)")


def param_groups(model: nn.Module, target: float = 1.0, masses: Sequence[float] | None = None,
                 sensitivities: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """One param group per atom of ``model`` with its ``module_kind`` and ``target`` norm."""
    found = atoms(model)
    if not found:
        raise ConfigError("optimizer", "dualized: the model has no trainable parameters")
    m = list(masses) if masses is not None else [a.mass for a in found]
    s = list(sensitivities) if sensitivities is not None else [a.sensitivity for a in found]
    targets = target_norms(m, s, target)
    return [{"params": list(a.params), "atom": a.name, "module_kind": a.module_kind, "target": t}
            for a, t in zip(found, targets)]


def build_dualized(params: Any, **hparams: Any) -> Dualized:
    """``Dualized`` over a model (atoms and target norms from its modules) or plain tensors."""
    if isinstance(params, nn.Module):
        params = param_groups(params)
    return Dualized(params, **hparams)


OPTIMIZERS.add(
    "dualized", build_dualized, options=DualizedOptions,
    summary="Modular dualisation: per-layer duality maps (orthogonalise, normalise rows) with target norms",
    source="trainlab.optim.modular_duality", own=True, needs_model=True, tensor_lr=True,
    paper="Bernstein & Newhouse 2024, Modular Duality in Deep Learning; Large et al. 2024, "
          "Scalable Optimization in the Modular Norm",
)
