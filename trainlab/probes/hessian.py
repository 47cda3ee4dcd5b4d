"""Curvature of the training loss: Hessian-vector products, top eigenvalues, trace, edge of stability.

All quantities are of the Hessian ``H = ∇²_θ L(θ)`` of the mean loss on the given batch,
``L(θ) = mean(loss_fn(model(inputs), targets))``, with respect to the chosen parameters (default: every
parameter with ``requires_grad``). Units: loss units per squared parameter unit.

- :func:`hvp`: ``H v`` by double backpropagation (Pearlmutter 1994, "Fast exact multiplication by the Hessian"):
  ``H v = ∇_θ (∇_θ L · v)``. One HVP costs about two backward passes.
- :func:`hessian_top_eigenvalues`: the ``k`` largest (algebraic) eigenvalues by the Lanczos method on HVPs, with
  full reorthogonalisation (Lanczos 1950; as used for neural networks by Ghorbani et al. 2019, "An investigation
  into neural net optimization via Hessian eigenvalue density", and PyHessian, Yao et al. 2020). The largest
  is the *sharpness*.
- :func:`hessian_trace`: ``tr(H)`` by Hutchinson's estimator ``E[zᵀHz]`` with Rademacher ``z`` (Hutchinson 1989;
  Avron & Toledo 2011), with its standard error. It is exact when ``H`` is diagonal: ``zᵢ² = 1``.
- :func:`edge_of_stability_ratio`: ``sharpness · lr / 2`` (Cohen et al. 2021, "Gradient descent on neural
  networks typically occurs at the edge of stability"): full-batch gradient descent drives the sharpness up to
  ``2/lr`` and hovers there, so the ratio rises to about 1. With heavy-ball momentum β the threshold is
  ``(2 + 2β)/lr`` (same paper). SGD's linear stability bounds ``tr(H)`` by about ``2/lr`` (Wu et al., the
  implicit regularisation of dynamical stability), so ``hessian_trace(...).mean · lr / 2`` is the analogous
  ratio for the trace.
- :func:`directional_sharpness`: ``uᵀHu / uᵀu`` along the optimizer's actual update ``u = Δθ``: the curvature
  the step sees (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability", measure the
  preconditioned analogue for Adam). A gradient step ``u = -lr·g`` overshoots along ``u`` when it exceeds
  ``2/lr``.

Cost over the given batch (what the trainer should budget; an HVP ≈ 2 backward passes):

====================================  =======  ==========================  =======================
probe                                 forward  backward (with graph)       HVPs
====================================  =======  ==========================  =======================
``hvp``                               --       1 (unless ``grads`` given)  1
``hessian_top_eigenvalues``           1        1                           ``min(iters, n_params)``
``hessian_trace``                     1        1                           ``samples``
``directional_sharpness``             1        1                           1
``edge_of_stability_ratio``           --       --                          --
====================================  =======  ==========================  =======================

Memory: the gradient's graph (created with ``create_graph=True``, larger than a training step's) stays alive for
all HVPs, and Lanczos keeps its basis (``min(iters, n_params) × n_params`` numbers).

The probes never change training: they use ``torch.autograd.grad`` (no ``.grad`` is written), restore each
module's train/eval flag, and draw random vectors from a local ``torch.Generator(seed)``. They evaluate the
model in eval mode (dropout off, BatchNorm with running statistics), because Lanczos and Hutchinson need the
same deterministic function at every HVP, and run ``F.scaled_dot_product_attention`` on its math backend, the
only one with a double backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple, overload

import torch
from torch import Tensor, nn

from trainlab.probes.mode import probe_mode  # noqa: F401 - re-exported: probes import it from here too

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(output, target) -> per-example (or per-token) losses, unreduced``: trainlab's ``Workload.loss``."""


def trainable_parameters(model: nn.Module, params: Iterable[Tensor] | None = None) -> list[Tensor]:
    """``params`` as a list, or every parameter of ``model`` with ``requires_grad`` (shared ones once)."""
    chosen: list[Tensor] = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("no parameters to probe (none given, and none of the model's requires grad)")
    return chosen


def parameter_names(model: nn.Module, params: Iterable[Tensor | str] | None = None) -> list[str]:
    """Names of the chosen parameters for ``torch.func`` (default: all with ``requires_grad``; shared parameters
    once, under their first name); tensors in ``params`` are matched to the model's by identity."""
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        by_id = {id(p): n for n, p in named.items()}
        names = []
        for p in params:
            if isinstance(p, str):
                if p not in named:
                    raise KeyError(f"the model has no parameter {p!r}")
                names.append(p)
            elif id(p) in by_id:
                names.append(by_id[id(p)])
            else:
                raise ValueError("a tensor in params is not a parameter of the model")
    if not names:
        raise ValueError("no parameters to probe (none given, and none of the model's requires grad)")
    return names


def mean_loss(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor) -> Tensor:
    """The batch loss the probes differentiate: the mean of the per-example (or per-token) losses."""
    return loss_fn(model(inputs), targets).mean()


def hvp(loss: Tensor, params: Sequence[Tensor], v: Sequence[Tensor], *,
        grads: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Hessian-vector product ``H v`` of a scalar ``loss`` w.r.t. ``params`` by double backpropagation.

    ``H v = ∇_θ (∇_θ loss · v)`` (Pearlmutter 1994). ``v`` is a list of tensors shaped like ``params``.
    ``grads`` are first derivatives computed with ``create_graph=True`` (pass them to reuse one gradient graph
    for many products); otherwise they are computed here. The graph is retained, so ``hvp`` can be called again
    on the same ``loss``. Parameters the loss does not depend on (or only linearly) get zero rows.

    Cost: 1 backward pass with graph (skipped when ``grads`` is given) and 1 double-backward (the HVP itself).
    Writes no ``.grad``.
    """
    params = list(params)
    if len(v) != len(params):
        raise ValueError(f"v has {len(v)} tensors for {len(params)} parameters")
    if grads is None:
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dot = sum(((g * vi).sum() for g, vi in zip(grads, v) if g is not None and g.requires_grad),
              torch.zeros((), device=loss.device, dtype=loss.dtype))
    if not dot.requires_grad:  # the gradient is constant in θ (or absent): H = 0
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]


class _Hessian:
    """``v -> H v`` on flat vectors, with the gradient graph computed once (the shared part of every HVP)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 params: list[Tensor]) -> None:
        self.params = params
        self.loss = mean_loss(model, loss_fn, inputs, targets)
        self.grads = torch.autograd.grad(self.loss, params, create_graph=True, allow_unused=True)
        self.sizes = [p.numel() for p in params]
        self.dim = sum(self.sizes)
        self.dtype = params[0].dtype
        self.device = params[0].device

    def split(self, flat: Tensor) -> list[Tensor]:
        return [c.view_as(p).to(p.dtype) for c, p in zip(flat.split(self.sizes), self.params)]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def __call__(self, flat: Tensor) -> Tensor:
        return self.flatten(hvp(self.loss, self.params, self.split(flat), grads=self.grads))


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    # Classical Gram-Schmidt twice ("twice is enough", Parlett): one pass loses orthogonality in float32.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _lanczos(matvec: Callable[[Tensor], Tensor], dim: int, iters: int, generator: torch.Generator,
             dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` Lanczos steps with full reorthogonalisation; returns (Ritz values, T's eigenvectors, basis).

    When the Krylov space becomes invariant (``β ≈ 0``, e.g. a Hessian with few distinct eigenvalues, or a
    repeated eigenvalue of which a single Krylov sequence sees one copy), the method restarts with a random
    vector orthogonal to the basis and a zero coupling, so repeated eigenvalues are found with their
    multiplicity and the projection ``VᵀHV`` stays tridiagonal.
    """
    m = min(iters, dim)
    eps = 100 * torch.finfo(dtype).eps

    def random_vector() -> Tensor:
        return torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    basis = torch.zeros(m, dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples basis[j] and basis[j + 1]
    v = random_vector()
    v = v / v.norm()
    scale = 0.0
    for j in range(m):
        basis[j] = v
        w = matvec(v)
        scale = max(scale, float(w.norm()))
        alpha = float(w @ v)
        alphas.append(alpha)
        if j == m - 1:
            break
        w = w - alpha * v - (betas[-1] * basis[j - 1] if j > 0 else 0.0)
        w = _orthogonalise(w, basis[: j + 1])
        beta = float(w.norm())
        if beta <= eps * max(scale, 1e-30):  # invariant subspace: restart orthogonally
            w = _orthogonalise(random_vector(), basis[: j + 1])
            beta, norm = 0.0, float(w.norm())
            if norm <= eps:  # the basis already spans everything (only when m == dim, by rounding)
                basis = basis[: j + 1]
                break
            v = w / norm
        else:
            v = w / beta
        betas.append(beta)
    n = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    return values, vectors, basis[:n]


@overload
def hessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = ...,
                            iters: int = ..., seed: int = ..., params: Iterable[Tensor] | None = ..., *,
                            return_eigenvectors: Literal[False] = ...) -> Tensor: ...


@overload
def hessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = ...,
                            iters: int = ..., seed: int = ..., params: Iterable[Tensor] | None = ..., *,
                            return_eigenvectors: Literal[True]) -> tuple[Tensor, list[list[Tensor]]]: ...


def hessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = 1,
                            iters: int = 20, seed: int = 0, params: Iterable[Tensor] | None = None, *,
                            return_eigenvectors: bool = False) -> Tensor | tuple[Tensor, list[list[Tensor]]]:
    """The ``k`` largest eigenvalues of the loss Hessian on ``(inputs, targets)``, by Lanczos on HVPs.

    Lanczos builds an orthonormal basis ``V`` of the Krylov space ``{v, Hv, ..., H^{m-1}v}`` (random Gaussian
    ``v`` from ``torch.Generator().manual_seed(seed)``, ``m = min(iters, n_params)``) in which ``VᵀHV`` is
    tridiagonal; its eigenvalues (Ritz values) approach the extreme eigenvalues of ``H`` first. The basis is
    fully reorthogonalised at every step (cheap for ``m`` of tens), so no spurious copies appear; with
    ``iters >= n_params`` the result is exact up to rounding. ``iters`` 20 (default) resolves the top one to a
    few digits on typical networks; raise it for ``k > 1`` or a small spectral gap.

    Args:
        model, loss_fn, inputs, targets: the loss ``mean(loss_fn(model(inputs), targets))``.
        k: how many of the largest (algebraic, not absolute) eigenvalues; ``k <= min(iters, n_params)``.
        iters: Lanczos steps (HVPs).
        seed: seed of the start vector (the caller's RNG is not used).
        params: the parameters (default: all with ``requires_grad``).
        return_eigenvectors: also return the Ritz vectors, unit-norm over all ``params``, each a list of tensors
            shaped like ``params``.

    Returns:
        A float64 CPU tensor of ``k`` eigenvalues, descending, in loss units per squared parameter unit
        (``[0]`` is the sharpness); with ``return_eigenvectors``, ``(eigenvalues, eigenvectors)``.

    Cost: 1 forward, 1 backward with graph, ``min(iters, n_params)`` HVPs; memory ``iters × n_params``.
    """
    if k < 1 or iters < 1:
        raise ValueError(f"k and iters must be >= 1, got k={k}, iters={iters}")
    params = trainable_parameters(model, params)
    generator = torch.Generator().manual_seed(seed)
    with probe_mode(model):
        op = _Hessian(model, loss_fn, inputs, targets, params)
        if k > min(iters, op.dim):
            raise ValueError(f"k={k} eigenvalues need at least k Lanczos steps (iters={iters}, n_params={op.dim})")
        values, vectors, basis = _lanczos(op, op.dim, iters, generator, op.dtype, op.device)
        order = torch.argsort(values, descending=True)[:k]
        top = values[order]
        if not return_eigenvectors:
            return top
        ritz = vectors[:, order].to(device=basis.device, dtype=basis.dtype).T @ basis  # (k, dim)
        return top, [[t.detach() for t in op.split(r)] for r in ritz]


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of ``tr(H)``: the sample mean, its standard error, the number of samples drawn, and
    whether the stopping target ``stderr <= rel_se · |mean|`` was met (True when no target was set)."""

    mean: float
    stderr: float
    samples: int
    converged: bool = True


def _mean_stderr(draws: Sequence[float]) -> tuple[float, float]:
    values = torch.tensor(draws, dtype=torch.float64)
    n = len(draws)
    stderr = float(values.std(correction=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), stderr


def hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, samples: int = 10,
                  seed: int = 0, params: Iterable[Tensor] | None = None, *, rel_se: float = 0.0,
                  max_samples: int = 100) -> TraceEstimate:
    """Trace of the loss Hessian by Hutchinson's estimator with Rademacher vectors, optionally drawn until accurate.

    ``tr(H) = E[zᵀHz]`` for ``z`` with independent ±1 entries (Hutchinson 1989); the estimate is the mean of the
    draws and ``stderr`` = sample standard deviation / √n (NaN for one sample). The variance of one draw is
    ``2 Σ_{i≠j} H_ij²``, so the estimate is exact (``stderr`` 0) when ``H`` is diagonal.

    Stopping rule: with ``rel_se = 0`` (default) exactly ``samples`` vectors are drawn. With ``rel_se > 0``,
    ``samples`` is the minimum (at least 2, so that a standard error exists): after each draw from the minimum
    on, sampling stops once ``stderr <= rel_se · |mean|``, or when ``max_samples`` draws are reached;
    ``converged`` says whether the target was met. The relative standard error of ``n`` draws is about
    ``s / (|tr H| √n)`` for a per-draw standard deviation ``s``, so the count needed is about
    ``(s / (rel_se · |tr H|))²``; a trace near 0 (relative accuracy unattainable) runs to ``max_samples``.
    The vectors come in the same order either way, so the first ``n`` draws of a stopped run are those of
    ``samples=n`` with ``rel_se=0`` (same values for the same seed).

    Bias: stopping on the data is a sequential rule, so ``mean`` is not exactly unbiased and ``stderr`` slightly
    understates the error: runs tend to stop right after draws that happen to raise ``|mean|`` or lower the
    sample spread. The effect is of the order of the reported standard error (itself at most ``rel_se · |mean|``
    when converged) and shrinks with a larger minimum ``samples``; use ``rel_se = 0`` for an unbiased fixed count.

    Args:
        model, loss_fn, inputs, targets: the loss ``mean(loss_fn(model(inputs), targets))``.
        samples: number of Rademacher vectors (HVPs) with ``rel_se = 0``; the minimum otherwise. Default 10.
        seed: seed of the vectors: a local ``torch.Generator().manual_seed(seed)`` (the caller's RNG is not used).
        params: the parameters (default: all with ``requires_grad``).
        rel_se: target standard error relative to ``|mean|`` (0: off, draw exactly ``samples``).
        max_samples: the most vectors drawn with ``rel_se > 0`` (``>= max(samples, 2)``).

    Returns:
        :class:`TraceEstimate` ``(mean, stderr, samples, converged)``, ``mean`` and ``stderr`` in loss units per
        squared parameter unit; ``samples`` is the number of vectors drawn.

    Cost: 1 forward, 1 backward with graph, ``samples`` HVPs (``rel_se > 0``: between ``max(samples, 2)`` and
    ``max_samples``).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not (math.isfinite(rel_se) and rel_se >= 0):
        raise ValueError(f"rel_se must be a finite number >= 0, got {rel_se}")
    minimum = max(samples, 2) if rel_se > 0 else samples
    if rel_se > 0 and max_samples < minimum:
        raise ValueError(f"max_samples must be >= max(samples, 2) = {minimum}, got {max_samples}")
    maximum = max_samples if rel_se > 0 else samples
    params = trainable_parameters(model, params)
    generator = torch.Generator().manual_seed(seed)
    draws: list[float] = []
    converged = True
    running_mean, sum_sq = 0.0, 0.0  # Welford's running mean and sum of squared deviations, for the stopping test
    with probe_mode(model):
        op = _Hessian(model, loss_fn, inputs, targets, params)
        while len(draws) < maximum:
            z = torch.randint(0, 2, (op.dim,), generator=generator).to(device=op.device, dtype=op.dtype) * 2 - 1
            draws.append(float(z @ op(z)))
            n = len(draws)
            delta = draws[-1] - running_mean
            running_mean += delta / n
            sum_sq += delta * (draws[-1] - running_mean)
            if rel_se > 0 and n >= minimum:
                converged = math.sqrt(sum_sq / (n - 1) / n) <= rel_se * abs(running_mean)
                if converged:
                    break
    mean, stderr = _mean_stderr(draws)
    return TraceEstimate(mean, stderr, len(draws), converged)


def edge_of_stability_ratio(sharpness: float, lr: float, momentum: float = 0.0) -> float:
    """``sharpness · lr / (2 (1 + momentum))``: 1 means training sits at the edge of stability.

    Cohen et al. (2021): under full-batch gradient descent with step ``lr`` the top Hessian eigenvalue rises
    ("progressive sharpening") until it reaches the stability threshold ``2/lr`` of a quadratic, then hovers
    there ("edge of stability"). With heavy-ball momentum ``β`` the threshold is ``(2 + 2β)/lr`` (same paper).
    For adaptive methods the analogue is the sharpness of the preconditioned Hessian (Cohen et al. 2022), which
    this ratio does not compute. Dimensionless.
    """
    return float(sharpness) * float(lr) / (2.0 * (1.0 + float(momentum)))


def directional_sharpness(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                          update: Sequence[Tensor], params: Iterable[Tensor] | None = None) -> float:
    """Curvature along the optimizer's actual update: ``uᵀHu / uᵀu`` with ``u = Δθ``.

    ``update`` is a list of tensors matching ``params`` (default: all with ``requires_grad``), e.g.
    ``[p_after - p_before for ...]``. The value lies between the smallest and largest eigenvalue of ``H``; it
    is the sharpness the step experiences: the loss along ``u`` rises, to second order, when it exceeds
    ``2 · (-gᵀu) / uᵀu`` (``2/lr`` for a gradient step ``u = -lr·g``). ``H`` is taken at the model's current
    parameters: call it before applying ``u`` to measure the curvature the step was taken from (the
    difference is second order in the step). Independent of the scale and sign of ``u``; NaN if ``u = 0``.

    Cost: 1 forward, 1 backward with graph, 1 HVP.
    """
    params = trainable_parameters(model, params)
    update = list(update)
    if len(update) != len(params) or any(u.shape != p.shape for u, p in zip(update, params)):
        raise ValueError("update must be a list of tensors with the shapes of params")
    with probe_mode(model):
        op = _Hessian(model, loss_fn, inputs, targets, params)
        u = op.flatten([t.detach() for t in update])
        uu = float(u.double() @ u.double())
        if uu == 0.0:
            return math.nan
        return float(u.double() @ op(u).double()) / uu
