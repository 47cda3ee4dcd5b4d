"""The information plane: I(X;T) and I(T;Y) of each hidden layer T, by binning, over training.

Shwartz-Ziv & Tishby 2017, "Opening the Black Box of Deep Neural Networks via Information": plot each hidden
layer T of a network at each epoch as the point (I(X;T), I(T;Y)) -- a fitting phase (both grow) followed by a
compression phase (I(X;T) falls). Their estimate (ravidziv/IDNNs; 12-bit inputs, tanh layers 12-10-7-5-4-3-2)
bins every unit into 30 equal bins on [−1, 1] and reads the binned layer as a discrete variable. Chelombiev,
Houghton & O'Donnell 2019, "Adaptive Estimators Show Information Compression in Deep Neural Networks" (ICLR
2019; ivansche/adaptive_estimators): bins that adapt to the activations of each layer at each epoch, so
unbounded activations (ReLU) are binned as finely where their values lie; with them compression is seen without
saturating activations.

Definitions (plug-in, in **bits**; N = probes.examples training examples of the fixed probe subset, each input
one outcome of X with probability 1/N; Y the class labels; T the binned layer, one symbol per distinct row of
bin indices)::

    H(T)    = −Σ_t p̂(t) log₂ p̂(t)
    I(X;T)  = H(T)                                   (T is a deterministic function of X: H(T|X) = 0)
    I(T;Y)  = H(T) − Σ_y p̂(y) H(T | Y = y)

Two estimators, each unit of layer T binned with the same edges (pooled over the layer's units, as both papers):

- ``fixed``: ``probes.info_plane_bins`` (B, default 30) equal-width bins on [min, max] of the layer's
  activations at this call; on [−1, 1] for a tanh layer (Shwartz-Ziv & Tishby's bins; they use B = 30 edges,
  here B intervals). A constant layer is one bin.
- ``adaptive``: Chelombiev et al.'s entropy-based adaptive binning (their code's ``maxentropy`` bins, per layer
  and call): with u₁ < ... < u_U the *distinct* activation values of the layer above its minimum m, the edges are
  m, u_{⌊kU/B⌋+1} for k = 0..B−1, and u_U -- so each bin holds about the same number of distinct values (equal
  mass when activations are distinct), the minimum (a ReLU's exact zeros) has a bin of its own, and so has the
  maximum. Difference from their code: the lowest edge is the layer's minimum at this call, where theirs is the
  activation's lower bound (0 for ReLU, −1 for tanh; the same edge for a ReLU layer with an inactive unit).
  Their KDE bounds (noise σ = 0.01) are not implemented.

Keys (one per hidden layer i = 0, 1, ... in depth order): ``fixed/I_XT/layer{i}``, ``fixed/I_TY/layer{i}``,
``adaptive/I_XT/layer{i}``, ``adaptive/I_TY/layer{i}``.

Range and bias: 0 ≤ I(T;Y) ≤ min(H(T), H(Y)) and I(X;T) ≤ log₂ N. The plug-in estimates are biased upwards by
the sample size: for T independent of Y, 2N ln2 · Î(T;Y) is asymptotically χ² with (K−1)(C−1) degrees of freedom
(the G-test; K occupied cells of T, C classes), so E[Î(T;Y)] ≈ (K−1)(C−1)/(2N ln 2) bits (Miller-Madow). When
every example falls in its own cell (K = N: many units, fine bins) Î(X;T) = log₂ N and Î(T;Y) = Ĥ(Y) whatever
the network does -- the estimate then measures the partition, not the network (the known weakness of binning,
Saxe et al. 2018); fewer bins or more examples are needed for a meaningful plane.

Layers: the outputs of the activation modules ``act0``, ``act1``, ... of ``model.body`` (trainlab's ``mlp`` and
``cnn1d``; a convolutional stage's units are its channels × positions), read with forward hooks. Other models
(the transformer) and real-valued or per-position targets do not apply.

COST per call: 1 forward of the probe batch (no backward); then per layer and estimator a sort and a row-wise
unique of an (N, units) integer matrix (O(N·units·log N)); memory: the layers' activations of the probe batch.
Eval mode (dropout off), parameters, ``.grad`` and the RNG untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from trainlab.probes.mode import probe_mode
from trainlab.probes.registry import NotApplicable, ProbeContext, register

Method = Literal["fixed", "adaptive"]
METHODS: tuple[Method, ...] = ("fixed", "adaptive")


def bin_edges(t: Tensor, bins: int, method: Method = "fixed", *, bounds: tuple[float, float] | None = None) -> Tensor:
    """The ascending lower edges of the bins of layer activations ``t`` (any shape; pooled over units), float64.

    A value v falls in bin ``j`` = the last edge ≤ v (values below the first edge, possible only with ``bounds``,
    go to bin 0; values above ``bounds``' upper end to the last bin). ``fixed``: B equal bins on ``bounds`` (default
    [min, max] of ``t``); ``adaptive``: Chelombiev et al.'s equal-count bins of the distinct values (module doc).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    values = t.detach().reshape(-1).double()
    if values.numel() == 0:
        raise ValueError("no activations to bin")
    lo, hi = (float(values.min()), float(values.max())) if bounds is None else bounds
    if method == "fixed":
        if not hi > lo:
            return torch.tensor([lo], dtype=torch.float64)  # a constant layer: one bin
        return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)[:-1]
    if method == "adaptive":
        low = float(values.min())
        distinct = torch.unique(values)  # sorted
        above = distinct[distinct > low]
        edges = [torch.tensor([low], dtype=torch.float64)]
        if above.numel():
            u = above.numel()
            picks = torch.tensor([math.floor(k * u / bins) for k in range(bins)], dtype=torch.long)
            edges += [above[picks], above[-1:]]
        return torch.unique(torch.cat(edges))  # repeated edges (fewer distinct values than bins) merge
    raise ValueError(f"unknown binning {method!r}; allowed: {', '.join(METHODS)}")


def digitize(t: Tensor, edges: Tensor) -> Tensor:
    """Bin indices ``(N, units)`` (int64) of activations ``t`` ``(N, ...)`` given ascending lower ``edges``."""
    flat = t.detach().reshape(t.shape[0], -1).double().cpu()
    return (torch.searchsorted(edges, flat, right=True) - 1).clamp_(min=0)


def entropy_bits(codes: Tensor) -> float:
    """Plug-in entropy (bits) of the rows of ``codes`` ``(N, units)``, each distinct row one symbol."""
    if codes.shape[0] == 0:
        return 0.0
    _, counts = torch.unique(codes, dim=0, return_counts=True)
    p = counts.double() / codes.shape[0]
    return float(-(p * p.log2()).sum())


def information(codes: Tensor, y: Tensor) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits of binned layer ``codes`` ``(N, units)`` and class labels ``y`` ``(N,)``."""
    if codes.shape[0] != y.shape[0]:
        raise ValueError(f"codes and labels differ in length: {codes.shape[0]} != {y.shape[0]}")
    h_t = entropy_bits(codes)
    y = y.reshape(-1).cpu()
    conditional = 0.0
    for label in torch.unique(y):
        members = y == label
        conditional += float(members.double().mean()) * entropy_bits(codes[members])
    # Clamp the rounding error of a difference of equal sums (I(T;Y) = 0 exactly for a constant layer).
    return h_t, max(0.0, h_t - conditional)


def layer_information(t: Tensor, y: Tensor, *, bins: int = 30, method: Method = "fixed",
                      bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits of the activations ``t`` ``(N, ...)`` of one layer, binned by ``method``.

    COST: a sort of the layer's values and a row-wise unique of the (N, units) bin indices, per class too.
    """
    return information(digitize(t, bin_edges(t, bins, method, bounds=bounds)), y)


def hidden_activations(model: nn.Module) -> list[nn.Module]:
    """The activation modules ``act0, act1, ...`` of ``model.body`` in depth order (empty if there are none)."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        return []
    named = [(name, m) for name, m in body.named_children() if name.startswith("act") and name[3:].isdigit()]
    return [m for _, m in sorted(named, key=lambda item: int(item[0][3:]))]


def info_plane(model: nn.Module, x: Tensor, y: Tensor, *, bins: int = 30) -> dict[str, float]:
    """``{"<method>/I_XT/layer{i}": bits, "<method>/I_TY/layer{i}": bits}`` for each hidden layer of ``model``.

    Raises ``ValueError`` for a model without ``body.act{i}`` modules. COST: 1 forward of ``x``, no backward.
    """
    acts = hidden_activations(model)
    if not acts:
        raise ValueError(f"{type(model).__name__} has no body.act<i> activation modules to read")
    outputs: list[Tensor | None] = [None] * len(acts)

    def keep(i: int) -> Callable[[nn.Module, object, Tensor], None]:
        def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
            outputs[i] = output.detach()
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(acts)]
    try:
        with torch.no_grad(), probe_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    for i, (module, t) in enumerate(zip(acts, outputs)):
        if t is None:
            continue  # a layer the forward did not reach
        for method in METHODS:
            # Shwartz-Ziv & Tishby bin tanh units on their whole range [-1, 1].
            bounds = (-1.0, 1.0) if method == "fixed" and isinstance(module, nn.Tanh) else None
            i_xt, i_ty = layer_information(t, y, bins=bins, method=method, bounds=bounds)
            out[f"{method}/I_XT/layer{i}"] = i_xt
            out[f"{method}/I_TY/layer{i}"] = i_ty
    return out


@register("info_plane", summary="information plane: I(X;T) and I(T;Y) in bits of each hidden layer (body.act<i>) "
                                "of the probe batch, fixed and adaptive binning",
          cost="1 forward of the probe batch; a sort and a row-wise unique of the binned activations per layer",
          paper="Shwartz-Ziv & Tishby 2017, Opening the Black Box of Deep Neural Networks via Information; "
                "Chelombiev et al. 2019, Adaptive Estimators Show Information Compression in Deep Neural Networks")
def _info_plane(ctx: ProbeContext) -> dict[str, float]:
    if ctx.y_train.is_floating_point() or ctx.y_train.dim() != 1:
        raise NotApplicable("I(T;Y) by binning needs one class label per example")
    if not hidden_activations(ctx.model):
        raise NotApplicable(f"{type(ctx.model).__name__} has no body.act<i> hidden activations (mlp and cnn1d do)")
    return info_plane(ctx.model, ctx.x_train, ctx.y_train, bins=ctx.options.info_plane_bins)
