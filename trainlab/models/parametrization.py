"""Parametrisations that change how training moves a model: the output scale α (lazy vs rich) and μP.

**Output scale** (Chizat, Oyallon & Bach 2019, "On Lazy Training in Differentiable Programming"):
:class:`OutputScaled` trains ``α·(f(x; θ) − f(x; θ₀))``. With a large α the parameters need to move only
O(1/α) to change the output by O(1), so the network stays close to its linearisation around θ₀ and its tangent
kernel barely changes (lazy, "kernel" training); a small α forces the features to move (rich training).
Centering by the frozen initial function makes the output 0 at initialisation whatever α is, so α changes the
dynamics and not the starting point. Their analysis scales the loss by 1/α² -- equivalently, gradient descent
on the plain loss with the step size divided by α² -- so that the output moves at an α-independent speed:
see :func:`output_scale_lr`. Kumar et al. (2024, "Grokking as the transition from lazy to rich training
dynamics") read grokking as a late lazy→rich transition. The NTK approximation stays valid up to training
time T once α = O(T) (a later, tight bound; Chizat et al. needed α = O(T²)).

**μP** (Yang & Hu 2021, Tensor Programs IV; Yang et al. 2022, "Tensor Programs V: Tuning Large Neural
Networks via Zero-Shot Hyperparameter Transfer", Table 3): per-layer learning rates and the output layer's
initialisation scaled with the width so that every layer's features move by Θ(1) per step at any width, and
the best learning rate found at ``base_width`` transfers to wider models. With ``m = width/base_width``
(multipliers relative to the base model, which μP leaves as it is):

=====================  ============  ============  ============
parameter              init var      Adam lr       SGD lr
=====================  ============  ============  ============
input weights          (kept)        × 1           × m
biases, norm gains     (kept)        × 1           × m  (output bias, scalars: × 1)
hidden weights         1/fan_in      × 1/m         × 1
output weights         1/fan_in²     × 1/m         × 1/m
=====================  ============  ============  ============

(Table 3's absolute values, columns "input weights & all biases" / "output weights" / "hidden weights": init
var 1/fan_in, 1/fan_in², 1/fan_in; SGD lr η·fan_out, η/fan_in, η; Adam lr η, η/fan_in, η/fan_in.) The hidden
and output rows only need the model's own init to have variance ∝ 1/fan_in (PyTorch's default; see
:func:`mup_init_` for the transformer). :func:`mup_param_groups` builds the optimizer groups;
:func:`mup_init_` sets the output layer's init (zero, or scaled to 1/fan_in²).
Layers are found from the structure: input = the first Linear/Conv/Embedding in registration order plus every
Embedding, output = the last Linear, hidden = every other parameter with ≥ 2 dims; both can be named
explicitly. ``width`` is the output layer's fan-in (the MLP's ``width``, the transformer's ``d_model``, a CNN's
last channel count) unless given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

OptimizerKind = Literal["adam", "sgd"]


# ---------------------------------------------------------------------------------------------- output scale α


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are buffers: optimizers, ``.parameters()`` and grads skip it."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        # Hooks (probes recording activations, say) belong to the trained model, not to its frozen copy.
        for hooks in (m._forward_pre_hooks, m._forward_hooks, m._backward_pre_hooks, m._backward_hooks):
            hooks.clear()
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            # A tied tensor becomes two buffers sharing storage (deepcopy kept the tie), so memory is paid once.
            m.register_buffer(name, None if p is None else p.detach())
    return ref


class OutputScaled(nn.Module):
    """``α·(f(x; θ) − f(x; θ₀))`` (``center=True``) or ``α·f(x; θ)``: the lazy/rich knob of Chizat et al. (2019).

    Args:
        model: the network f; it is trained as ``self.model`` (its parameters are this module's parameters).
        alpha: the output scale α > 0. Large α: lazy (NTK) regime; α ≲ 1: rich (feature-learning) regime.
        center: subtract the initial function f(·; θ₀), so the output at initialisation is exactly 0.

    Centering keeps θ₀ as a frozen deep copy, ``self.reference``, whose parameters are *buffers*: optimizers,
    weight decay and parameter counts never see them, ``.to()`` moves them, and the state dict carries them
    (``reference.*`` beside ``model.*``), so a resumed run centres on the same θ₀. Cost: memory for one more
    copy of every parameter and buffer, and one more forward pass per call (without backward unless the inputs
    require grad: input-Jacobian probes get the centred function's Jacobian). The reference follows the
    wrapper's train/eval mode; its dropout masks differ from the model's, so the output at init is exactly 0 only
    without stochastic layers or in eval mode.

    Learning rate: Chizat et al. train ``(1/α²)·L(α·f̄)``, i.e. the plain loss with the step size divided by α²
    for (S)GD, so the output moves at an α-independent speed; :func:`output_scale_lr` gives that rate (and
    lr/α for Adam-type optimizers, whose steps do not scale with the gradient).

    Order: initialise (:mod:`trainlab.models.init`, :func:`mup_init_`) and apply σReparam *before* wrapping, as
    they act on parameters and the copy holds buffers; or call :meth:`reset_reference_` afterwards. Code that
    walks ``named_modules()`` of the wrapper also meets the copy's layers (``reference.*``, weights as buffers);
    walk ``self.model`` instead.

    Attributes the wrapped model has and this module does not (``features``, ``attention_weights``, ``embed``,
    ``head``, ...) are forwarded to it: they describe the *unscaled, uncentred* model (``head(features(x))``
    is f, not the wrapper's output).
    """

    def __init__(self, model: nn.Module, alpha: float, center: bool = True) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.model = model
        self.alpha = float(alpha)
        self.center = center
        self.reference = _frozen_copy(model) if center else None

    def reset_reference_(self) -> OutputScaled:
        """Make the wrapped model as it is now the new θ₀ (a fresh frozen copy, so changes of structure such as
        σReparam are followed too); the centred output becomes 0 again. Returns ``self``."""
        if self.reference is not None:
            self.reference = None  # free the old copy before making the new one
            self.reference = _frozen_copy(self.model)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.model(*args, **kwargs)
        if self.reference is not None:
            out = out - self.reference(*args, **kwargs)
        return self.alpha * out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, center={self.center}"


def output_scale_lr(lr: float, alpha: float, optimizer_kind: OptimizerKind = "sgd") -> float:
    """The learning rate for output scale α that keeps the output's speed independent of α.

    ``sgd``: ``lr/α²`` (Chizat et al. 2019: the gradient of ``L(α·f)`` is α·∇f·L' and the output moves α times
    that). ``adam``: ``lr/α`` (an Adam step's size does not depend on the gradient's scale, so only the α of
    the output remains). ``lr`` is the rate that suits α = 1.
    """
    if optimizer_kind == "sgd":
        return lr / alpha**2
    if optimizer_kind == "adam":
        return lr / alpha
    raise ValueError(f"optimizer_kind must be 'adam' or 'sgd', got {optimizer_kind!r}")


# -------------------------------------------------------------------------------------------------------- μP


_LAYER_TYPES = (nn.Linear, _ConvNd, nn.Embedding)
_Layer = nn.Linear | _ConvNd | nn.Embedding


@dataclass(frozen=True)
class MupLayers:
    """The roles μP gives a model's layers (qualified module names) and the width multiplier's inputs."""

    input: tuple[str, ...]
    hidden: tuple[str, ...]
    output: str
    width: int

    def multiplier(self, base_width: int) -> float:
        """``m = width / base_width``."""
        return self.width / base_width


def _layers(model: nn.Module) -> dict[str, _Layer]:
    """Modules with their own trainable-shaped ``weight`` parameter (a frozen copy's buffers do not count)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _LAYER_TYPES) and isinstance(m._parameters.get("weight"), nn.Parameter)}


def mup_layers(model: nn.Module, *, input_layers: Sequence[str] | None = None, output_layer: str | None = None,
               width: int | None = None) -> MupLayers:
    """Classify ``model``'s layers for μP (see the module doc); names override the structural guess.

    Raises ``ValueError`` if there is no output layer (no ``nn.Linear``, or ``output_layer`` names no layer),
    or if the output weight is tied to an input weight (tied embeddings need μP's output multiplier in the
    forward pass, which this module does not add).
    """
    layers = _layers(model)
    if output_layer is None:
        linears = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"μP: {type(model).__name__} has no nn.Linear to use as its output layer; "
                             f"name one with output_layer= (layers: {', '.join(layers) or 'none'})")
        output_layer = linears[-1]
    elif output_layer not in layers:
        raise ValueError(f"μP: output_layer {output_layer!r} is not a Linear/Conv/Embedding layer of the model; "
                         f"layers: {', '.join(layers) or 'none'}")
    if input_layers is None:
        first = [n for n in layers if n != output_layer][:1]
        embeddings = [n for n, m in layers.items() if isinstance(m, nn.Embedding) and n != output_layer]
        input_layers = tuple(dict.fromkeys(first + embeddings))
    else:
        input_layers = tuple(input_layers)
        unknown = [n for n in input_layers if n not in layers]
        if unknown:
            raise ValueError(f"μP: input layers {unknown} are not layers of the model; layers: {', '.join(layers)}")
    out_w = layers[output_layer].weight
    if any(layers[n].weight is out_w for n in input_layers):
        raise ValueError(f"μP: the output layer {output_layer!r} shares its weight with an input layer (tied "
                         "embeddings); untie them or use an output multiplier (not supported here)")
    hidden = tuple(n for n in layers if n != output_layer and n not in input_layers)
    if width is None:
        width = out_w.numel() // out_w.shape[0]  # the output layer's fan-in
    return MupLayers(input_layers, hidden, output_layer, int(width))


def _roles(model: nn.Module, layers: MupLayers) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters by μP role: ``input``, ``hidden``, ``output`` weights; ``vector`` (biases, gains, scaled with
    width); ``fixed`` (the output bias and 0-d scalars, whose size does not grow with width)."""
    owner_role = {name: "input" for name in layers.input} | {name: "hidden" for name in layers.hidden}
    owner_role[layers.output] = "output"
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in ("input", "vector", "fixed", "hidden",
                                                                         "output")}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p.dim() >= 2:
                role = owner_role.get(mod_name, "hidden")  # a ≥2-D parameter of another module: a hidden matrix
            elif p.dim() == 0 or mod_name == layers.output:
                role = "fixed"
            else:
                role = "vector"
            roles[role].append((full, p))
    return roles


def mup_multipliers(m: float, optimizer_kind: OptimizerKind = "adam") -> dict[str, float]:
    """The lr multiplier of each role for width multiplier ``m`` (TP5 Table 3 relative to the base model)."""
    if optimizer_kind == "adam":
        return {"input": 1.0, "vector": 1.0, "fixed": 1.0, "hidden": 1.0 / m, "output": 1.0 / m}
    if optimizer_kind == "sgd":
        return {"input": m, "vector": m, "fixed": 1.0, "hidden": 1.0, "output": 1.0 / m}
    raise ValueError(f"optimizer_kind must be 'adam' or 'sgd', got {optimizer_kind!r}")


def mup_param_groups(model: nn.Module, base_width: int, lr: float, optimizer_kind: OptimizerKind = "adam", *,
                     weight_decay: float | None = None, input_layers: Sequence[str] | None = None,
                     output_layer: str | None = None, width: int | None = None) -> list[dict[str, Any]]:
    """Torch param groups with μP learning rates (Yang et al. 2022, TP5 Table 3; see the module doc).

    Args:
        model: the network (may be wrapped, e.g. in :class:`OutputScaled`; frozen copies are skipped).
        base_width: the width at which ``lr`` was tuned (in the units of ``width``: the output layer's fan-in).
        lr: the learning rate of the base model; each group gets ``lr × multiplier``.
        optimizer_kind: ``adam`` for Adam-like optimizers (Adam, AdamW, Lion, ... that normalise the gradient
            per coordinate), ``sgd`` for SGD-like ones.
        weight_decay: if given, each group's ``weight_decay`` is divided by its lr multiplier, so that
            ``lr·weight_decay`` (the per-step decay of torch's AdamW) is the same at every width -- the rule of
            the ``mup`` package's MuAdam/MuSGD. ``None``: groups carry no weight decay of their own.
        input_layers, output_layer, width: overrides of :func:`mup_layers`.

    Each group has ``params``, ``lr``, ``lr_multiplier``, ``mup_role`` (input, vector, fixed, hidden, output)
    and ``param_names``; empty roles are left out and groups with multiplier 1 come first. Every parameter of
    ``model`` is in exactly one group. A schedule must scale each group's own ``lr`` (as ``LambdaLR`` and the
    trainer's loop do).
    """
    layers = mup_layers(model, input_layers=input_layers, output_layer=output_layer, width=width)
    mult = mup_multipliers(layers.multiplier(base_width), optimizer_kind)
    groups = []
    for role, named in _roles(model, layers).items():
        if not named:
            continue
        group: dict[str, Any] = {"params": [p for _, p in named], "lr": lr * mult[role], "lr_multiplier": mult[role],
                                 "mup_role": role, "param_names": [n for n, _ in named]}
        if weight_decay is not None:
            group["weight_decay"] = weight_decay / mult[role]
        groups.append(group)
    groups.sort(key=lambda g: g["lr_multiplier"] != 1.0)  # stable: the trainer logs the first group's lr
    return groups


@torch.no_grad()
def mup_init_(model: nn.Module, base_width: int, *, output: Literal["zero", "scaled"] = "zero",
              hidden: Literal["keep", "fan_in"] = "keep", input_layers: Sequence[str] | None = None,
              output_layer: str | None = None, width: int | None = None) -> nn.Module:
    """μP initialisation of ``model`` in place (TP5 Table 3); returns it.

    ``output``:

    - ``"zero"`` (default): the output layer's weight and bias are 0. Compatible with μP (under the 1/fan_in²
      variance the output's random initial contribution vanishes with width anyway), offered by the authors'
      ``mup`` package as ``MuReadout(readout_zero_init=True)``; it removes the random initial function, and the
      hidden layers start learning after the output layer's first step.
    - ``"scaled"``: the output weight is multiplied by ``√(base_width/width)``. This turns a variance ∝ 1/fan_in
      (PyTorch's default, used by the MLP and CNNs) into Table 3's ∝ 1/fan_in², anchored so that the base model
      is unchanged. Not meaningful for a width-independent init such as the transformer's GPT-2 N(0, 0.02²):
      use ``"zero"``, or ``hidden="fan_in"`` with it.

    ``hidden``: ``"keep"`` leaves hidden weights as they are (PyTorch's default init already has variance
    ∝ 1/fan_in); ``"fan_in"`` redraws them from N(0, 1/fan_in), Table 3's hidden init, which the transformer
    needs for width transfer (its GPT-2 init has a fixed std). Input weights and biases are kept.

    Caveat for the transformer: TP5 also scales attention logits by 1/d_head instead of 1/√d_head; trainlab's
    attention uses 1/√d_head, which is μP-consistent when width grows through ``n_head`` at a fixed head size.
    """
    layers = mup_layers(model, input_layers=input_layers, output_layer=output_layer, width=width)
    if output not in ("zero", "scaled"):
        raise ValueError(f"output must be 'zero' or 'scaled', got {output!r}")
    if hidden not in ("keep", "fan_in"):
        raise ValueError(f"hidden must be 'keep' or 'fan_in', got {hidden!r}")
    head = model.get_submodule(layers.output)
    weight, bias = head.get_parameter("weight"), getattr(head, "bias", None)
    if output == "zero":
        weight.zero_()
        if isinstance(bias, nn.Parameter):
            bias.zero_()
    else:
        weight.mul_(math.sqrt(base_width / layers.width))
    if hidden == "fan_in":
        for _, p in _roles(model, layers)["hidden"]:
            p.normal_(0.0, 1.0 / math.sqrt(p.numel() / p.shape[0]))
    return model
