"""Muon: momentum orthogonalised by Newton–Schulz, for hidden weight matrices, with AdamW for the rest.

Paper: Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein (2024), "Muon: An optimizer for hidden layers in
neural networks" (https://kellerjordan.github.io/posts/muon/). References: KellerJordan/Muon ``muon.py``
(``muon_update``, ``MuonWithAuxAdam``) and ``torch.optim.Muon``.

Update of a hidden matrix ``W`` (shape ``rows × cols``; a conv filter ``(out, in, *k)`` is viewed as
``(out, in·Πk)``) with gradient ``g``, per step::

    buf ← lerp(buf, g, 1-β)                           EMA momentum, β = momentum
    u   = lerp(g, buf, β)  if nesterov  else  buf
    O   = orthogonalize(u)                            ≈ U Vᵀ of u = U S Vᵀ   (trainlab.optim.newton_schulz)
    W   ← W·(1 - lr·wd)                               decoupled weight decay
    W   ← W - lr·scale·O

``scale`` ("units": the spectral norm of a step is about ``lr·scale``):

- ``original`` (default): ``sqrt(max(1, rows/cols))`` (KellerJordan/Muon; torch's ``adjust_lr_fn=None``);
- ``match_rms_adamw``: ``0.2·sqrt(max(rows, cols))`` (Liu et al. 2025, "Muon is scalable for LLM training",
  Moonlight): the update's RMS matches AdamW's, so AdamW's lr and weight decay can be reused.

Every other parameter (biases, norm gains, embeddings, the output head, the first conv; see
:mod:`trainlab.optim.param_split`) is updated by AdamW inside the *same* optimizer object, in param groups with
``use_muon=False`` (like the reference's ``MuonWithAuxAdam``)::

    m ← lerp(m, g, 1-β1);  v ← lerp(v, g², 1-β2);  W ← W·(1 - lr·wd) - lr·(m/(1-β1ᵗ)) / (sqrt(v/(1-β2ᵗ)) + eps)

Defaults: Muon lr 0.02, momentum 0.95, nesterov, weight decay 0, 5 quintic Newton–Schulz steps; AdamW lr 3e-4,
betas (0.9, 0.95), eps 1e-10, weight decay 0 (the reference's values). Every group keeps its own base lr
(also stored as ``initial_lr``): a schedule multiplies each group's lr by the same factor.

Speed: matrices of the same 2-D shape in a group are stacked and orthogonalised together (one batched
Newton–Schulz). ``ns_dtype="auto"`` (:func:`trainlab.optim.hardware.ns_dtype_for`) runs Newton–Schulz in
bfloat16 on CUDA, and on a CPU in bfloat16 exactly when it has native bf16 matrix instructions (``amx_bf16`` or
``avx512_bf16``, :func:`~trainlab.optim.hardware.cpu_has_fast_bf16`), else in float32; float64 parameters off
CUDA keep float64 iterations (as :func:`trainlab.optim.newton_schulz.default_dtype`). Measured on an Intel
Xeon with AMX-BF16 (one thread): 965 ms/step with float32 iterations, 331 ms with bf16 (torch.optim.Muon:
310 ms). :meth:`Muon.resolved_options` reports what ``auto`` became; a run's summary.json records it.

Accuracy: bf16 iterations are the reference's choice (KellerJordan/Muon casts to bf16; ``torch.optim.Muon``
casts to bf16 on every device, CPU included, in torch 2.13). Newton–Schulz only has to push singular values
into a band around 1 (quintic: about [0.68, 1.13]), which bf16's 8-bit mantissa does not spoil; the result is
returned in the parameter's dtype and momentum stays in it. Pass ``ns_dtype="float32"`` for float32 numerics.

Differences from the references (all deliberate, none changes the algorithm):

- ``torch.optim.Muon`` runs Newton–Schulz in bfloat16 always and divides by ``max(||u||_F, 1e-7)``;
  trainlab picks the precision per device and CPU capability and divides by ``||u||_F + 1e-7`` (KellerJordan/Muon). With
  float32 iterations on both sides the two agree to ~1e-6 over 20+ steps (tested).
- torch's default ``lr=1e-3, weight_decay=0.1`` differ from the reference's 0.02 / 0; trainlab follows the
  reference.
- KellerJordan/Muon scales conv filters by ``sqrt(max(1, kh/kw))`` (it reads the 4-D gradient's last two
  dims, i.e. 1 for square kernels); trainlab uses the flattened ``(out, in·kh·kw)`` shape, consistent with
  the matrix it orthogonalises.
- The AdamW groups apply weight decay as torch.optim.AdamW does (``W·(1 - lr·wd)``), like the reference.

Given an ``nn.Module`` (``optim.build("muon", model)``; the trainer does this) the split into Muon and AdamW
groups is automatic. Given plain tensors only matrices (ndim ≥ 2) are accepted; pass dicts
``{"params": [...], "use_muon": False}`` for AdamW groups.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.optim.hardware import cpu_has_fast_bf16, ns_dtype_for
from trainlab.optim.newton_schulz import Workspace, orthogonalize
from trainlab.optim.param_split import split
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import evaluate_closure, hyperparameter

NSCoefficients = Literal["quintic", "tuned", "you", "polar_express"]
NSDtype = Literal["auto", "bfloat16", "float32"]
Scale = Literal["original", "match_rms_adamw"]

_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}


def resolve_ns_dtype(ns_dtype: str, like: Tensor) -> torch.dtype:
    """The Newton–Schulz precision for matrices like ``like``: ``ns_dtype``, or for ``auto``
    :func:`~trainlab.optim.hardware.ns_dtype_for` of its device (float64 off CUDA stays float64)."""
    explicit = _DTYPES[ns_dtype]
    if explicit is not None:
        return explicit
    device_type = like.device.type
    if like.dtype == torch.float64 and device_type != "cuda":
        return torch.float64
    return ns_dtype_for(device_type, device_type == "cpu" and cpu_has_fast_bf16())


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view Muon orthogonalises: ``(rows, cols)``, a conv filter ``(out, in·Πk)``."""
    return int(shape[0]), int(math.prod(shape[1:]))


def shape_scale(rows: int, cols: int, scale: str = "original") -> float:
    """``sqrt(max(1, rows/cols))`` (original) or ``0.2·sqrt(max(rows, cols))`` (match_rms_adamw)."""
    if scale == "original":
        return math.sqrt(max(1.0, rows / cols))
    if scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown Muon scale {scale!r}; allowed: original, match_rms_adamw")


def muon_momentum(grad: Tensor, buf: Tensor, beta: float, nesterov: bool) -> Tensor:
    """EMA momentum in place (``buf ← lerp(buf, grad, 1-β)``); returns the direction to orthogonalise."""
    buf.lerp_(grad, 1 - beta)
    return grad.lerp(buf, beta) if nesterov else buf


def write_direction(out: Tensor, grad: Tensor, buf: Tensor, beta: float, nesterov: bool,
                    scratch: Tensor | None = None) -> None:
    """Write the direction :func:`muon_momentum` returns (after its buffer update) into ``out``, a matrix view
    in the iteration's dtype: directly where the dtypes agree, else through ``scratch`` (a reusable tensor shaped
    like ``out`` in ``grad``'s dtype; None: a fresh one). The same values as ``out.copy_(direction)``."""
    if not nesterov:
        out.copy_(buf.reshape(out.shape))
    elif out.dtype == grad.dtype:
        torch.lerp(grad.reshape(out.shape), buf.reshape(out.shape), beta, out=out)
    else:
        out.copy_(torch.lerp(grad.reshape(out.shape), buf.reshape(out.shape), beta, out=scratch))


def muon_update(
    grad: Tensor,
    buf: Tensor,
    beta: float = 0.95,
    nesterov: bool = True,
    *,
    coefficients: str = "quintic",
    ns_steps: int = 5,
    scale: str = "original",
    ns_dtype: torch.dtype | None = None,
) -> Tensor:
    """Muon's update direction for one matrix (the reference ``muon_update``), shaped like ``grad``.

    Updates ``buf`` in place; the caller applies ``W ← W·(1 - lr·wd) - lr·update``. The optimizer's
    ``step`` computes the same thing for many matrices at once (stacking equal shapes).
    """
    u = muon_momentum(grad, buf, beta, nesterov)
    rows, cols = matrix_shape(grad.shape)
    O = orthogonalize(u.reshape(rows, cols), coefficients, ns_steps, ns_dtype)
    return (O * shape_scale(rows, cols, scale)).view_as(grad)


def adam_update(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, betas: tuple[float, float],
                eps: float) -> Tensor:
    """Bias-corrected Adam direction ``m̂ / (sqrt(v̂) + eps)``; updates the moments in place (step ≥ 1)."""
    beta1, beta2 = betas
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
    return (exp_avg / (1 - beta1**step)).div_(denom)


class Muon(torch.optim.Optimizer):
    """Muon for matrices plus AdamW for the other parameters, in one optimizer (see the module docstring).

    Args:
        params (iterable): tensors, or param-group dicts; a dict with ``use_muon=False`` is an AdamW group.
        lr (float or Tensor): Muon learning rate (default: 0.02); a 0-dim tensor is read as torch.optim reads one.
        momentum (float): Muon momentum β (default: 0.95).
        nesterov (bool): Nesterov-style momentum (default: True).
        weight_decay (float): Muon decoupled weight decay (default: 0).
        ns_coefficients (str): Newton–Schulz coefficient set (default: quintic).
        ns_steps (int): Newton–Schulz iterations (default: 5).
        ns_dtype (str): auto (bf16 on CUDA and on CPUs with native bf16 matrix units, else float32),
            bfloat16 or float32 (default: auto).
        scale (str): original or match_rms_adamw (default: original).
        adam_lr (float or Tensor): AdamW learning rate (default: 3e-4).
        adam_betas (tuple): AdamW betas (default: (0.9, 0.95)).
        adam_eps (float): AdamW eps (default: 1e-10).
        adam_weight_decay (float): AdamW decoupled weight decay (default: 0).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_coefficients: str = "quintic",
        ns_steps: int = 5,
        ns_dtype: str = "auto",
        scale: str = "original",
        adam_lr: float | Tensor = 3e-4,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
        adam_weight_decay: float = 0.0,
    ) -> None:
        if ns_dtype not in _DTYPES:
            raise ValueError(f"muon: ns_dtype must be one of {', '.join(_DTYPES)}, got {ns_dtype!r}")
        shape_scale(2, 1, scale)  # validates the name
        self.muon_defaults: dict[str, Any] = {
            "lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
            "ns_coefficients": ns_coefficients, "ns_steps": ns_steps, "ns_dtype": ns_dtype, "scale": scale}
        self.adam_defaults: dict[str, Any] = {"lr": adam_lr, "betas": tuple(adam_betas), "eps": adam_eps,
                                              "weight_decay": adam_weight_decay}
        super().__init__(params, {})
        self.defaults = dict(self.muon_defaults)
        self._ns_workspace = Workspace()  # Newton–Schulz buffers reused between steps (CPU; not checkpointed)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        use_muon = bool(group.setdefault("use_muon", True))
        for key, value in (self.muon_defaults if use_muon else self.adam_defaults).items():
            group.setdefault(key, value)
        # A copy of a tensor lr, as torch's LRScheduler keeps it: a schedule's lr.fill_() must not move it.
        group.setdefault("initial_lr", group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"])
        if use_muon:
            for i, p in enumerate(group["params"]):
                if p.ndim < 2:
                    raise ConfigError("optimizer", (
                        f"muon: parameter {i} of group {len(self.param_groups)} has shape {tuple(p.shape)}; given "
                        "plain parameters Muon takes matrices only (ndim >= 2). Pass the model itself "
                        "(optim.build('muon', model)) to send biases, gains, embeddings and the head to AdamW, "
                        "or put them in a group {'params': [...], 'use_muon': False}"))
        saved, self.defaults = self.defaults, {}  # the group is complete; no cross-kind defaults
        try:
            super().add_param_group(group)
        finally:
            self.defaults = saved

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adam_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("muon: sparse gradients are not supported")
        grads = [p.grad for p in params]
        bufs = [self._momentum_buffer(p) for p in params]
        beta, nesterov = group["momentum"], group["nesterov"]
        torch._foreach_lerp_(bufs, grads, 1 - beta)
        lr, wd = hyperparameter(group["lr"]), group["weight_decay"]
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[matrix_shape(p.shape)].append(i)
        for (rows, cols), idx in by_shape.items():
            like = params[idx[0]]
            ns_dtype = resolve_ns_dtype(group["ns_dtype"], like)
            # Stacked straight into the iteration's dtype (one pass converts and stacks; a stack, then a cast, was
            # two), in buffers kept between steps on CPU (fresh multi-MB tensors cost page faults every step), and
            # the result left in that dtype (add_ promotes it exactly while it updates the parameter; a cast back
            # first was another pass). benchmarks/RESULTS.md, "Muon's bf16 step", has the measurements.
            workspace = self._ns_workspace if like.device.type == "cpu" else None
            shape = (len(idx), rows, cols)
            stacked = (workspace.buffer("input", shape, ns_dtype, like.device) if workspace is not None
                       else torch.empty(shape, dtype=ns_dtype, device=like.device))
            scratch = (workspace.buffer("direction", (rows, cols), like.dtype, like.device) if workspace is not None
                       else None)
            for j, i in enumerate(idx):
                write_direction(stacked[j], grads[i], bufs[i], beta, nesterov, scratch)
            O = orthogonalize(stacked, group["ns_coefficients"], group["ns_steps"], ns_dtype, workspace=workspace)
            step_size = lr * shape_scale(rows, cols, group["scale"])
            for j, i in enumerate(idx):
                p = params[i]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.add_(O[j].reshape(p.shape), alpha=-step_size)

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        """The parameter's momentum buffer, made (zeros) on its first step only."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def resolved_options(self) -> dict[str, Any]:
        """What the ``auto`` options became on this machine, for a run's summary: ``{"ns_dtype": name}`` for the
        Muon groups' first matrix (one name, or a list when groups differ); ``{}`` without Muon matrices."""
        names = []
        for group in self.param_groups:
            if group["use_muon"] and group["params"]:
                name = _DTYPE_NAMES.get(resolve_ns_dtype(group["ns_dtype"], group["params"][0]), "?")
                if name not in names:
                    names.append(name)
        if not names:
            return {}
        return {"ns_dtype": names[0] if len(names) == 1 else names}

    def _adam_group(self, group: dict[str, Any]) -> None:
        lr, wd = hyperparameter(group["lr"]), group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            update = adam_update(p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["betas"],
                                 group["eps"])
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr)


@dataclass(frozen=True)
class MuonOptions:
    lr: float = option(0.02, ge=0.0, help="Muon learning rate (spectral-norm units with scale=original)")
    momentum: float = option(0.95, ge=0.0, lt=1.0, help="Muon EMA momentum β")
    nesterov: bool = option(True, help="Nesterov-style momentum: orthogonalise lerp(g, buf, β)")
    weight_decay: float = option(0.0, ge=0.0, help="Muon decoupled weight decay: W ← W·(1 - lr·wd)")
    ns_coefficients: NSCoefficients = option("quintic", help="Newton–Schulz coefficient set")
    ns_steps: int = option(5, ge=1, le=99, help="Newton–Schulz iterations")
    ns_dtype: NSDtype = option("auto", help="Newton–Schulz precision (auto: bfloat16 on CUDA and on CPUs with "
                                                     "amx_bf16/avx512_bf16, else float32)")
    scale: Scale = option("original", help="update scale: original sqrt(max(1,rows/cols)) or match_rms_adamw "
                                           "0.2·sqrt(max(rows,cols))")
    adam_lr: float = option(3e-4, ge=0.0, help="AdamW learning rate for embeddings, head, biases, gains, first conv")
    adam_betas: tuple[float, float] = option((0.9, 0.95), ge=0.0, lt=1.0, help="AdamW betas")
    adam_eps: float = option(1e-10, ge=0.0, help="AdamW eps")
    adam_weight_decay: float = option(0.0, ge=0.0, help="AdamW decoupled weight decay")
    muon_exclude: str = option("", help="regex on parameter names sent to AdamW in addition to the defaults")

    def validate(self) -> None:
        try:
            re.compile(self.muon_exclude)
        except re.error as err:
            raise ConfigError("muon_exclude", f"not a regular expression: {err}") from None


def build_muon(params: Any, *, muon_exclude: str = "", **hparams: Any) -> Muon:
    """``Muon`` over a model (automatic Muon/AdamW split, see :mod:`~trainlab.optim.param_split`) or tensors."""
    if isinstance(params, nn.Module):
        muon, adam = split(params, muon_exclude or None)
        groups = []
        if muon:
            groups.append({"params": list(muon.values()), "use_muon": True})
        if adam:
            groups.append({"params": list(adam.values()), "use_muon": False})
        return Muon(groups, **hparams)
    if muon_exclude:
        raise ConfigError("optimizer", "muon: muon_exclude selects parameters by name and needs the model, not tensors")
    return Muon(params, **hparams)


OPTIMIZERS.add(
    "muon", build_muon, options=MuonOptions,
    summary="Muon: Newton–Schulz-orthogonalised momentum for hidden matrices, AdamW for the rest",
    source="trainlab.optim.muon", own=True, needs_model=True, tensor_lr=True,
    paper="Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks",
)
