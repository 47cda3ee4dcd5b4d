"""Named initialisations, applied in place to any ``nn.Module`` after it is built; each returns the module.

- :func:`orthogonal_init_` -- every parameter with two or more dimensions orthogonal (Saxe et al. 2014);
  ``gain`` multiplies it. Biases and 1-D parameters (norm gains) are left as they are.
- :func:`spectral_init_` -- the spectral condition of Yang, Simon & Bernstein ("A Spectral Condition for
  Feature Learning", 2023): every weight semi-orthogonal with spectral norm ``√(fan_out/fan_in)``, biases 0.
  This is also the initialisation of AGD (Bernstein et al. 2023) and of modular-norm training.
- :func:`data_dependent_init_` -- Luther & Seung (2019), "Variance-Preserving Initialization Schemes Improve
  Deep Network Training: But Which Variance is Preserved?": rescale and shift layer by layer so that every
  unit's pre-activation has *sample* mean 0 and *sample* variance 1 on a given batch.
- :func:`nanda_init_` -- Nanda et al. (2023): their grokking transformer's ``N(0, 1/d_model)`` weights and
  ``N(0, 1/n_outputs)`` unembedding, for trainlab's transformer.
- :func:`ibp_init_` -- Shi et al. (2021), "Fast Certified Robust Training with Short Warmup": every Linear and
  Conv weight but the output layer's drawn from ``N(0, (√(2π)/fan_in)²)``, so interval bounds neither grow nor
  shrink through depth at initialisation.

The global init scale (Omnigrok's large initialisation, Liu et al. 2023) is
:func:`trainlab.models.layers.scale_parameters_` (every model's ``init_scale`` option); it composes with these:
initialise, then scale.

Conventions: a weight of shape ``(out, in, *kernel)`` is read as the matrix ``(out, in·k)`` -- dim 0 against
the rest, as ``torch.nn.init`` does -- so ``fan_out = shape[0]`` and ``fan_in = numel / shape[0]``. Shared
(tied) tensors are initialised once, by their first owner in ``named_modules`` order. :data:`INITS` names the
initialisations for configuration; :func:`apply_init` applies one by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from trainlab.registry import Registry, UnknownNameError

InitFn = Callable[..., nn.Module]


def _own_matrices(module: nn.Module) -> Iterable[tuple[nn.Module, str, nn.Parameter]]:
    """``(owner, name, parameter)`` for every parameter with ≥ 2 dims, each shared tensor once."""
    seen: set[int] = set()
    for owner in module.modules():
        for name, p in owner.named_parameters(recurse=False):
            if p.dim() >= 2 and id(p) not in seen:
                seen.add(id(p))
                yield owner, name, p


@torch.no_grad()
def orthogonal_init_(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """Every parameter of ``module`` with ≥ 2 dims set to a random (semi-)orthogonal matrix times ``gain``.

    The matrix ``(shape[0], numel/shape[0])`` (a conv weight flattened to ``(out, in·k)``) has orthonormal rows
    if it is wide and orthonormal columns if it is tall (``torch.nn.init.orthogonal_``): ``WWᵀ = gain²·I`` or
    ``WᵀW = gain²·I``. Embedding tables count as weights. Biases and norm gains are not touched.
    Draws from the global RNG (seed with ``torch.manual_seed``). Returns ``module``.
    """
    for _, _, p in _own_matrices(module):
        nn.init.orthogonal_(p, gain=gain)
    return module


@torch.no_grad()
def spectral_init_(module: nn.Module) -> nn.Module:
    """Semi-orthogonal weights with spectral norm ``√(fan_out/fan_in)``, their biases 0 (Yang, Simon & Bernstein).

    The spectral condition asks that a layer map inputs of unit RMS size to outputs of unit RMS size: for
    ``h = Wx`` with ``‖x‖₂ = √fan_in`` and ``‖h‖₂ = √fan_out`` that is ``‖W‖₂ = √(fan_out/fan_in)``, and a
    semi-orthogonal W attains it for every input in its row space. Conv weights use ``fan_in = in·k`` (the
    flattened patch; AGD instead scales each kernel position by ``1/√k``, an equivalent RMS size for
    non-overlapping patches).

    Embeddings read one-hot inputs (``‖x‖₂ = 1``), for which the same condition gives each embedding *vector*
    norm ``√d`` (unit RMS coordinates, as the modular norm's embedding rule): the table is made orthogonal and
    its rows then rescaled to norm ``√embedding_dim`` (a ``padding_idx`` row stays 0).

    Biases of the modules whose weights were set are zeroed; other parameters (norm gains) are not touched.
    Returns ``module``.
    """
    for owner, name, p in _own_matrices(module):
        nn.init.orthogonal_(p)
        if isinstance(owner, nn.Embedding) and name == "weight":
            p.mul_(math.sqrt(p.shape[1]) / p.norm(dim=1, keepdim=True).clamp_min(1e-12))
            if owner.padding_idx is not None:
                p[owner.padding_idx].zero_()
        else:
            p.mul_(math.sqrt(p.shape[0] / (p.numel() / p.shape[0])))
        bias = getattr(owner, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.zero_()
    return module


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the layer of interest has run."""

    def __init__(self, inputs: Tensor, output: Tensor) -> None:
        super().__init__()
        self.inputs, self.output = inputs, output


def _run(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _units_last(y: Tensor, conv: bool) -> Tensor:
    """``(samples, units)``: Linear outputs are ``(..., units)``, conv outputs ``(batch, units, *positions)``."""
    if conv:
        y = y.movedim(1, -1)
    return y.reshape(-1, y.shape[-1])


def _capture(model: nn.Module, inputs: Any, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Input and output of the first call of ``layer`` in a forward pass of ``model`` (cut off there)."""
    def stop(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        raise _Stop(args[0], out)

    handle = layer.register_forward_hook(stop)
    try:
        _run(model, inputs)
    except _Stop as s:
        return s.inputs, s.output
    finally:
        handle.remove()
    raise RuntimeError("the layer was not called in the forward pass")  # callers only pass layers that ran


def _mean_patch(layer: nn.Module, x: Tensor, conv: bool) -> Tensor:
    """``G`` with ``G[j]`` the mean input patch unit j reads, i.e. sample mean of output j = ``⟨W[j], G[j]⟩``.

    Linear: the mean input row. Conv: the gradient of the summed output means w.r.t. the weight (the output of
    a bias-free layer is linear in its weight; this gets zero padding, stride and groups right).
    """
    w = layer.get_parameter("weight")  # a Parameter: the caller only takes layers that have one
    if not conv:
        return x.reshape(-1, x.shape[-1]).mean(0).expand_as(w)
    with torch.enable_grad():
        w0 = w.detach().clone().requires_grad_(True)
        y = torch.func.functional_call(layer, {"weight": w0}, (x.detach(),))
        (g,) = torch.autograd.grad(_units_last(y, conv).mean(0).sum(), w0)
    return g


@torch.no_grad()
def data_dependent_init_(module: nn.Module, inputs: Tensor | tuple[Any, ...], *,
                         layer_types: tuple[type[nn.Module], ...] = (nn.Linear, _ConvNd), exclude: Iterable[str] = (),
                         without_bias: Literal["project", "scale"] = "project", eps: float = 1e-8) -> nn.Module:
    """Luther & Seung (2019): make every unit's pre-activation have sample mean 0 and variance 1 on ``inputs``.

    Luther & Seung decompose the variance of a pre-activation over random networks *and* samples into the
    network-averaged sample variance plus the squared sample mean, and show that in deep ReLU nets the mean term
    dominates in later layers: a variance-preserving random init can have every unit nearly constant across the
    data. This initialiser fixes the network instead and preserves the statistics over the *samples*.

    Procedure: layers (instances of ``layer_types``: Linear and Conv by default) are visited in the order they
    are first called in ``module(inputs)``; for each, a forward pass up to that layer (the earlier layers already
    done) gives its output ``y`` on the batch, and per unit j (a Linear's output feature, a conv's channel;
    statistics pooled over batch, sequence and spatial positions) with sample mean ``μ_j`` and standard deviation
    ``s_j`` (divisor N, the batch's own statistics)::

        with a bias:     W_j ← W_j / s_j,   b_j ← (b_j − μ_j) / s_j        ⇒ mean 0, variance 1 exactly

    Without a bias the mean cannot be shifted; ``without_bias`` chooses:

    - ``"project"`` (default): remove from ``W_j`` its component along the mean input patch ``ḡ_j`` (whose
      inner product with ``W_j`` *is* the sample mean), ``W_j ← W_j − (⟨W_j, ḡ_j⟩/‖ḡ_j‖²)·ḡ_j``, then divide by
      the new standard deviation: mean 0 and variance 1 exactly, at the price of one direction of each unit's
      weight (the mean input direction; nothing is removed if the mean input is 0).
    - ``"scale"``: only divide ``W_j`` by ``√(μ_j² + s_j²)``: the sample *second moment* is 1 (mean² + variance
      = 1), the weight's direction is kept, and the mean is not 0.

    A unit whose standard deviation is below ``eps`` (constant on the batch, e.g. fed only by dead ReLUs) is
    centred but not rescaled. Because each layer's statistics depend only on the layers before it, the property
    holds for all layers at once when the procedure ends (for feed-forward models; a layer called twice is
    normalised for its first call). Layers never called by the forward pass (e.g. ``nn.MultiheadAttention``'s
    ``out_proj``, whose weight is used directly) are not touched.

    Args:
        inputs: a batch (or a tuple of positional arguments) for ``module``; larger batches give statistics
            closer to the data's. Token ids work (the Embedding layers are not changed).
        layer_types: the modules whose outputs count as pre-activations.
        exclude: ``fnmatch`` patterns of qualified module names to leave alone (e.g. ``("head",)`` to keep the
            output layer's init).
        without_bias: the rule for layers without a bias (above).
        eps: threshold on ``s_j`` below which a unit is not rescaled.

    Runs in eval mode (dropout off; the mode is restored) and costs one forward pass per layer, each cut off
    after its layer. Apply it before σReparam (:mod:`trainlab.models.reparam`), whose layers it refuses.
    Returns ``module``.
    """
    if without_bias not in ("project", "scale"):
        raise ValueError(f"without_bias must be 'project' or 'scale', got {without_bias!r}")
    exclude = list(exclude)
    names = {m: name for name, m in module.named_modules()
             if isinstance(m, layer_types) and isinstance(getattr(m, "weight", None), nn.Parameter)
             and not any(fnmatchcase(name, p) for p in exclude)}
    for m, name in names.items():
        if hasattr(m, "reset_sigma_"):  # σReparam divides W by σ(W): the per-unit rescale would be undone in part
            raise ValueError(f"data_dependent_init_: {name!r} is σReparam'd; initialise before apply_sigma_reparam_")
    order: list[nn.Module] = []

    def record(m: nn.Module, _args: Any, _out: Any) -> None:
        if m not in order:
            order.append(m)

    modes = {m: m.training for m in module.modules()}
    module.eval()
    handles = [m.register_forward_hook(record) for m in names]
    try:
        _run(module, inputs)
    finally:
        for h in handles:
            h.remove()
    try:
        for layer in order:
            conv = isinstance(layer, _ConvNd)
            x, y = _capture(module, inputs, layer)
            w = layer.get_parameter("weight")  # a Parameter: `names` only takes layers that have one
            rows = w.view(w.shape[0], -1)  # per-unit views: scaling a row scales that unit's output
            bias = layer.bias
            stats = _units_last(y, conv).double()
            mean, std = stats.mean(0), stats.std(0, correction=0)
            if isinstance(bias, Tensor):  # None for a layer built with bias=False
                scale = torch.where(std > eps, 1.0 / std, torch.ones_like(std))
                rows.mul_(scale.to(w.dtype)[:, None])
                bias.sub_(mean.to(bias.dtype)).mul_(scale.to(bias.dtype))
            elif without_bias == "scale":
                second = (mean.square() + std.square()).sqrt()
                rows.mul_(torch.where(second > eps, 1.0 / second, torch.ones_like(second)).to(w.dtype)[:, None])
            else:
                g = _mean_patch(layer, x, conv).reshape(rows.shape).double()
                g_sq = g.square().sum(1)
                coef = torch.where(g_sq > 0, (rows.double() * g).sum(1) / g_sq.clamp_min(1e-300), 0.0)
                rows.sub_((coef[:, None] * g).to(w.dtype))
                std = _units_last(layer(x), conv).double().std(0, correction=0)
                rows.mul_(torch.where(std > eps, 1.0 / std, torch.ones_like(std)).to(w.dtype)[:, None])
    finally:
        for m, mode in modes.items():
            m.training = mode
    return module


@torch.no_grad()
def ibp_init_(module: nn.Module) -> nn.Module:
    """Shi et al. (2021)'s IBP initialisation: ``W ~ N(0, σ²)``, ``σ = √(2π)/fan_in``, for every layer but the last.

    Interval bound propagation maps a box of radius ``r`` through a layer to radius ``|W|·r``; with
    ``W_ij ~ N(0, σ²)`` each output radius is about ``fan_in · E|W_ij| · r̄ = fan_in · σ·√(2/π) · r̄``, which is
    ``2·r̄`` at this σ, and a ReLU keeps about half of it, so bounds keep their size through depth. Standard
    initialisations (variance ∝ 1/fan_in) make that gain grow as √fan_in per layer and bounds explode with depth.

    Layers: the ``nn.Linear`` and ``nn.Conv*`` modules in registration order (``fan_in = numel / shape[0]``:
    ``in_channels/groups · kernel`` for a conv), all but the last, which is the output layer in trainlab's models
    (its default initialisation is kept, as in the reference code, shizhouxing/Fast-Certified-Robust-Training's
    ``ibp_init``). Biases and BatchNorm parameters keep their values; a shared weight is drawn once. Shi et al.
    also halve weights after a residual addition; trainlab's MLP and CNNs have none. Draws from the global RNG.
    Returns ``module``.
    """
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, _ConvNd))]
    seen: set[int] = set()
    for layer in layers[:-1]:
        w = layer.weight
        if id(w) not in seen:
            seen.add(id(w))
            nn.init.normal_(w, mean=0.0, std=math.sqrt(2 * math.pi) / (w.numel() // w.shape[0]))
    return module


@torch.no_grad()
def nanda_init_(module: nn.Module) -> nn.Module:
    """Nanda et al. (2023, "Progress measures for grokking via mechanistic interpretability")'s initialisation of
    their 1-layer transformer, on trainlab's transformer: every weight matrix -- token and position embeddings,
    the attention's Q/K/V and output projections, both MLP matrices -- ``N(0, 1/d_model)``, the unembedding
    ``N(0, 1/n_outputs)``, biases 0 (their code: ``randn(...)/sqrt(d_model)``, and ``/sqrt(d_vocab)`` for the
    unembedding).

    Deviations: their unembedding's ``d_vocab`` counts the ``=`` token (p + 1 = 114 for p = 113), trainlab's
    head has the ``p`` classes only (113): a 0.4% larger standard deviation. A head tied to the token embedding
    is drawn once, as the embedding (``N(0, 1/d_model)``). LayerNorm gains and biases, if the model has them,
    are left at 1 and 0. Needs a model with ``tok_emb`` (an ``nn.Embedding``) and ``head`` (an ``nn.Linear``),
    as ``trainlab.models.transformer.Transformer``; a ValueError otherwise. Draws from the global RNG.
    """
    tok_emb, head = getattr(module, "tok_emb", None), getattr(module, "head", None)
    if not isinstance(tok_emb, nn.Embedding) or not isinstance(head, nn.Linear):
        raise ValueError("param.init=nanda is the initialisation of Nanda et al.'s transformer; it needs "
                         "model=transformer")
    d_model = tok_emb.embedding_dim
    for owner, _, p in _own_matrices(module):
        std = 1 / math.sqrt(head.out_features) if owner is head else 1 / math.sqrt(d_model)
        nn.init.normal_(p, mean=0.0, std=std)
    for sub in module.modules():
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
    return module


def default_init_(module: nn.Module) -> nn.Module:
    """Leave the model's own initialisation as it is (PyTorch's defaults; GPT-2's for the transformer)."""
    return module


INITS: Registry[InitFn] = Registry("init")
INITS.add("default", default_init_, summary="keep the model's own initialisation")
INITS.add("orthogonal", orthogonal_init_, summary="every ≥2-D weight (semi-)orthogonal times gain (Saxe et al.)",
          paper="Saxe, McClelland & Ganguli 2014")
INITS.add("spectral", spectral_init_, summary="semi-orthogonal, spectral norm √(fan_out/fan_in), biases 0",
          paper="Yang, Simon & Bernstein 2023, A Spectral Condition for Feature Learning")
INITS.add("data_dependent", data_dependent_init_, needs_inputs=True,
          summary="per-unit pre-activation sample mean 0, sample variance 1 on a batch (needs inputs=)",
          paper="Luther & Seung 2019, Variance-Preserving Initialization Schemes ... Which Variance is Preserved?")
INITS.add("nanda", nanda_init_, summary="transformer: weights N(0, 1/d_model), unembedding N(0, 1/n_outputs), biases 0",
          paper="Nanda et al. 2023, Progress measures for grokking via mechanistic interpretability")
INITS.add("ibp", ibp_init_, summary="weights N(0, (sqrt(2 pi)/fan_in)^2) but the output layer's: bounded IBP boxes",
          paper="Shi et al. 2021, Fast Certified Robust Training with Short Warmup")


def apply_init(module: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """Apply the initialisation registered as ``name`` (see :data:`INITS`) with ``kwargs``; returns ``module``.

    ``data_dependent`` needs ``inputs=`` (a batch). Raises ``ValueError`` naming the allowed names for an
    unknown one.
    """
    try:
        entry = INITS.get(name)
    except UnknownNameError as err:
        raise ValueError(str(err)) from None
    return entry.factory(module, **kwargs)
