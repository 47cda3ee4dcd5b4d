"""The neural Fisher kernel on a batch: the Gram matrix of per-example score vectors, its spectrum and rank.

Zhang, Zhai, Littwin & Susskind 2022, "Learning Representation from Neural Fisher Kernel with Low-rank
Approximation" (ICLR): the Neural Fisher Kernel is the Fisher kernel (Jaakkola & Haussler 1998) of a network,
``K(x, z) = U_xᵀ I⁻¹ U_z`` with score vectors ``U_x = ∇_θ log p_θ(x)`` and Fisher information ``I = E[U Uᵀ]``;
the paper shows that practical NFKs are low-rank. For a batch of ``n`` labelled examples this module computes,
with ``g_i = ∇_θ log p_θ(y_i | x_i)`` the score of example ``i`` (a row of ``G``, ``n × P``)::

    K = G Gᵀ / n                    (n × n)      the kernel,  K_ij = <g_i, g_j> / n
    F = Gᵀ G / n = (1/n) Σ_i g_i g_iᵀ  (P × P)   the (empirical) Fisher, never formed: it has K's non-zero spectrum

and reports ``K``'s eigenvalues (descending), ``trace = tr K = tr F = (1/n) Σ_i |g_i|²`` and the effective rank
of :func:`trainlab.probes.rank.effective_rank` (Roy & Vetterli 2007) applied to ``K``: ``exp(-Σ p_i log p_i)``
with ``p = λ / Σλ`` the normalised eigenvalues (for a PSD matrix they are its singular values), the same for
``F``; in ``[1, rank K]``, equal to ``r`` for ``r`` equal non-zero eigenvalues.

Two deliberate departures from the paper's kernel, both stated so the numbers are read right:

- The metric is the identity, not ``I⁻¹``: with ``I`` estimated on the same ``n`` examples,
  ``G (GᵀG/n)⁺ Gᵀ = n · (projection onto the row space of G)``, whose spectrum is ``n`` (``rank G`` times) and
  carries no information beyond the rank. So ``K`` here is the score Gram matrix (the "Fisher representation"),
  and its spectrum is the Fisher's. The paper's own classifier form (models read as energy-based) and its
  low-rank embedding are not reproduced; the scores here are those of the conditional likelihood ``p(y | x)``.
- Which labels (``labels``): ``"true"`` (default) takes the scores at the examples' own labels: ``F`` is the
  *empirical* Fisher, the uncentred second moment of the per-example loss gradients (for one target per
  example, ``n · K_ii`` is GraNd², Paul et al. 2021, and ``trace = |ḡ|² + (n-1)/n · tr Σ`` in the terms of
  :mod:`trainlab.probes.noise_scale`).
  Chosen as the default because the Fisher kernel is the inner product of the scores *of the observed data*
  (for a labelled example, its label is observed), because it is a deterministic function of the model (values
  at successive steps compare without label-sampling noise), and because it costs one gradient per example.
  ``"model"`` draws one label per example (per token for sequences) from the model's predictive distribution
  ``p_θ(· | x)`` (seeded, CPU generator): then ``E[F] = Σ_i E_{y~p_θ}[g g ᵀ]/n`` is the Fisher information (the
  generalised Gauss-Newton matrix for softmax outputs), which Kunstner, Balles & Hennig 2019 ("Limitations of
  the empirical Fisher approximation for natural gradient descent") show the empirical Fisher does not
  approximate away from a fitted, well-specified model. One sample per example: unbiased, not exact.

The log-likelihood is read off the workload's own per-example loss, ``log p(y | x) = -Σ loss_fn(f(x), y)``
(summed over a sequence's tokens: the log-likelihood of the whole target): cross-entropy is ``-log softmax``,
StableMax cross-entropy ``-log stablemax``, half squared error the Gaussian ``-log N(y; f(x), I)`` up to a constant
(so ``"true"`` applies to regression too). ``"model"`` needs class targets: ``p_θ(c | x) = exp(-loss_fn(f(x), c))``
for every class ``c``, checked to sum to 1 (a loss that is no normalised likelihood, e.g. with label smoothing,
is refused).

Units: ``K``, its eigenvalues and trace in squared log-likelihood units per squared parameter unit (``F`` is the
curvature of ``-log p`` in that sense); the effective rank is a count.

COST (``n`` examples, ``P`` parameters): per-example gradients by ``torch.func.vmap(grad)`` over
``functional_call`` (as :func:`trainlab.probes.data_diet.grand_scores`): 1 forward + 1 backward per example,
vectorised in chunks; ``labels="model"``: 1 more forward and ``C`` loss evaluations (``C`` classes). Then
``O(n² P)`` for ``K`` (float64) and ``O(n³)`` for its eigenvalues. Memory: ``G``, ``n × P`` numbers in the
parameters' dtype. Eval mode (dropout off), flags restored, no ``.grad`` written, global RNG untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trainlab.probes.hessian import LossFn, probe_mode
from trainlab.probes.noise_scale import functional_state
from trainlab.probes.rank import effective_rank
from trainlab.probes.registry import NotApplicable, ProbeContext, register

Labels = Literal["true", "model"]


def per_example_scores(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       params: Iterable[Tensor | str] | None = None, *, chunk_size: int | None = None) -> Tensor:
    """``G`` ``(n, P)``: row ``i`` is ``∇_θ log p(y_i | x_i) = -∇_θ Σ loss_fn(f(x_i), y_i)``, flattened over
    ``params`` (default: all with ``requires_grad``, in ``named_parameters`` order), in the parameters' dtype.

    ``chunk_size`` examples per vmapped call (default: as many as keep ``chunk · P`` under 2²² numbers); it
    changes memory and speed, not the result. COST: 1 forward + 1 backward per example (vmapped); memory ``n · P``.
    """
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs and targets differ in length: {inputs.shape[0]} != {targets.shape[0]}")
    values, buffers, n_params, chunk = functional_state(model, params, chunk_size)
    names = list(values)

    def log_likelihood(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return -loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)).sum()

    scores = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    rows = []
    # no_grad: torch.func's grad ignores it, but it keeps parameters left out of ``params`` from recording a graph
    with probe_mode(model), torch.no_grad():
        for lo in range(0, inputs.shape[0], chunk):
            grads = scores(values, inputs[lo:lo + chunk], targets[lo:lo + chunk])
            rows.append(torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in names], dim=1))
    return torch.cat(rows)


@torch.no_grad()
def predictive_probabilities(model: nn.Module, loss_fn: LossFn, inputs: Tensor) -> Tensor:
    """``p_θ(c | x) = exp(-loss_fn(f(x), c))`` for every class ``c`` (the last axis of the output), float64,
    shaped like the output (``(n, C)`` or ``(n, T, C)``).

    Raises ``ValueError`` when they do not sum to 1 (within 1e-4): the loss is then not a normalised negative
    log-likelihood over the classes. COST: 1 forward, ``C`` evaluations of ``loss_fn``.
    """
    with probe_mode(model):
        out = model(inputs)
    classes, shape = out.shape[-1], out.shape[:-1]
    probs = torch.stack([(-loss_fn(out, torch.full(shape, c, dtype=torch.long, device=out.device))).double().exp()
                         for c in range(classes)], dim=-1)
    error = float((probs.sum(dim=-1) - 1).abs().max())
    if not error <= 1e-4:
        raise ValueError(f"exp(-loss) over the {classes} classes sums to 1 +- {error:.2g}, not 1: the loss is not a "
                         "normalised negative log-likelihood")
    return probs


def sample_labels(model: nn.Module, loss_fn: LossFn, inputs: Tensor, generator: torch.Generator) -> Tensor:
    """One label per example (per position for sequences) drawn from :func:`predictive_probabilities`, int64 on
    the output's device. ``generator`` is a CPU generator (the sampling runs on the CPU)."""
    probs = predictive_probabilities(model, loss_fn, inputs)
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1]).to(probs.device)


class FisherKernel(NamedTuple):
    """The kernel ``K = GGᵀ/n`` (float64), its eigenvalues (descending, float64), ``tr K``, its effective rank, and
    the labels the scores were taken at (the targets, or the sampled ones)."""

    kernel: Tensor
    eigenvalues: Tensor
    trace: float
    effective_rank: float
    labels: Tensor


def fisher_kernel(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, *, labels: Labels = "true",
                  seed: int = 0, params: Iterable[Tensor | str] | None = None) -> FisherKernel:
    """The score Gram matrix ``K = GGᵀ/n`` of ``n = len(inputs)`` examples, its spectrum and effective rank.

    Args:
        model, loss_fn, inputs, targets: the per-example log-likelihood ``-Σ loss_fn(model(x), y)``.
        labels: ``"true"`` (default; empirical Fisher) or ``"model"`` (labels sampled from the model; Fisher);
            see the module doc for which and why. ``"model"`` needs integer class targets.
        seed: seeds the label sampling of ``"model"`` (``torch.Generator().manual_seed(seed)``).
        params: the parameters (default: all with ``requires_grad``).

    Returns:
        :class:`FisherKernel`. The eigenvalues of ``K`` are the non-zero eigenvalues of ``F = GᵀG/n`` (padded with
        zeros to ``n``); tiny negative rounding is clipped to 0.

    COST: per-example gradients of ``n`` examples (+ 1 forward for ``"model"``), ``O(n² P + n³)``; memory ``n · P``.
    """
    if labels not in ("true", "model"):
        raise ValueError(f"labels must be 'true' or 'model', got {labels!r}")
    n = inputs.shape[0]
    if n < 1:
        raise ValueError("the Fisher kernel needs at least one example")
    if labels == "model":
        if targets.is_floating_point():
            raise ValueError("labels='model' samples class labels; these targets are real-valued")
        targets = sample_labels(model, loss_fn, inputs, torch.Generator().manual_seed(seed))
    g = per_example_scores(model, loss_fn, inputs, targets, params)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=g.device)
    for block in g.split(2**16, dim=1):  # float64 products without a float64 copy of all of G
        block = block.double()
        kernel += block @ block.T
    kernel = (kernel / n).cpu()
    kernel = 0.5 * (kernel + kernel.T)
    eigenvalues = torch.linalg.eigvalsh(kernel).flip(0).clamp_min(0.0)
    return FisherKernel(kernel, eigenvalues, float(kernel.trace()), effective_rank(kernel), targets)


@register("nfk", summary="neural Fisher kernel of nfk_examples training examples (score Gram matrix; empirical "
                         "Fisher by default): top eigenvalues, trace, effective rank",
          cost="per-example gradients of nfk_examples examples (vmapped fwd + bwd; + 1 fwd for nfk_labels=model), "
               "O(n^2 n_params) for the kernel",
          paper="Zhang et al. 2022, Learning Representation from Neural Fisher Kernel with Low-rank Approximation")
def _nfk(ctx: ProbeContext) -> dict[str, float]:
    o = ctx.options
    x, y = ctx.x_train[: o.nfk_examples], ctx.y_train[: o.nfk_examples]
    if o.nfk_labels == "model" and y.is_floating_point():
        raise NotApplicable("nfk_labels=model samples class labels; this workload's targets are real-valued")
    try:
        result = fisher_kernel(ctx.model, ctx.loss_fn, x, y, labels=o.nfk_labels, seed=o.seed)
    except ValueError as err:
        if o.nfk_labels != "model":
            raise
        raise NotApplicable(str(err).splitlines()[0]) from None  # a loss that is no normalised likelihood
    out = {f"eig{i + 1}": float(v) for i, v in enumerate(result.eigenvalues[: o.nfk_top].tolist())}
    out["trace"] = result.trace
    out["effective_rank"] = result.effective_rank
    return out
