"""The eigenvalue density of the loss Hessian by stochastic Lanczos quadrature (SLQ).

Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density"
(implementation as in PyHessian, Yao et al. 2020, ``amirgholami/PyHessian``). The spectral density of the
``d × d`` Hessian ``H = ∇²_θ L(θ)`` (``L`` the mean loss on the probe batch, as in :mod:`trainlab.probes.hessian`)
is ``φ(t) = (1/d) Σ_i δ(t - λ_i)``. For a unit vector ``v``, ``vᵀ f(H) v = Σ_i (q_iᵀv)² f(λ_i)`` is the integral
of ``f`` against the spectral measure ``μ_v = Σ_i (q_iᵀv)² δ_{λ_i}`` (``q_i`` the eigenvectors), and
``E[μ_v] = φ`` when ``E[v vᵀ] = I/d``. ``m`` Lanczos steps from ``v`` give a tridiagonal ``T = Q Λ Qᵀ`` whose
eigenvalues and squared first eigenvector components are the nodes and weights of the ``m``-point Gauss
quadrature of ``μ_v``::

    nodes   λ_j = Λ_jj,          weights  w_j = Q_{1j}²         (Σ_j w_j = 1;  exact for polynomials of degree
                                                                  < 2m, e.g. Σ_j w_j λ_j = vᵀHv for any m)
    density φ(t) ≈ mean over n_v runs of Σ_j w_j N(t; λ_j, σ²)

- :func:`slq`: nodes and weights of ``runs`` independent quadratures of any symmetric ``v -> H v``. The start
  vector is Rademacher, ``v = z/√d`` with ``z ∈ {±1}^d`` (PyHessian's), so ``d · Σ_j w_j λ_j = zᵀHz`` is exactly
  Hutchinson's trace estimate (:func:`trainlab.probes.hessian.hessian_trace` draws the same ``z`` from the
  same seed), with variance ``2 Σ_{i≠k} H_ik²`` per run. Lanczos is
  :func:`trainlab.probes.hessian._lanczos` (full reorthogonalisation; an invariant Krylov space restarts with
  zero coupling, which adds nodes of weight 0 and leaves the quadrature of ``μ_v`` unchanged), so with
  ``iters = d`` the nodes are the eigenvalues of ``H``.
- :func:`density`: the smoothed density on a grid, ``σ²`` by default PyHessian's ``1e-5 · max(1, grid span)``
  (:func:`default_grid` is PyHessian's grid: 10 000 points from the mean smallest node - 0.01 to the mean
  largest + 0.01). Integrates to 1 over the real line (to the dimension ``d`` when multiplied by it, the
  eigenvalue-count normalisation).
- :func:`hessian_density`: :func:`slq` of the loss Hessian of a model, in eval mode (PyHessian's), with the
  HVPs of :mod:`trainlab.probes.hessian`; :func:`summarize` and :func:`write_density` are the probe's scalars and
  file.

Units: eigenvalues (nodes) in loss units per squared parameter unit; weights are fractions of the ``d``
eigenvalues; the density is per eigenvalue unit.

COST (``m = min(iters, d)``): 1 forward, 1 backward with graph, ``runs · m`` Hessian-vector products (≈ 2 backward
passes each), plus ``O(runs · m² · d)`` for the reorthogonalisation; memory: the gradient's graph and the
Lanczos basis, ``m × d`` numbers. PyHessian's defaults, ``m = 100`` and ``n_v = 1``, are the probe's
(``probes.hessian_density_iters``, ``probes.hessian_density_runs``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from trainlab.probes.hessian import LossFn, _Hessian, _lanczos, probe_mode, trainable_parameters
from trainlab.probes.registry import ProbeContext, register
from trainlab.rundir.atomic import atomic_write_text

# PyHessian's density_generate: the smoothing variance is SIGMA2_SCALE · max(1, grid span), the grid reaches
# GRID_MARGIN beyond the mean extreme nodes.
SIGMA2_SCALE = 1e-5
GRID_MARGIN = 0.01


class _Reflected:
    """``v -> R H R v`` with the Householder reflection ``R`` that maps Lanczos's own start vector to ``start``.

    :func:`_lanczos` draws a Gaussian start ``u`` itself; SLQ wants a Rademacher one, ``s``. ``R = I - 2wwᵀ``
    with ``w = (u - s)/|u - s|`` swaps the two unit vectors and is its own inverse, so the Krylov sequence of
    ``RHR`` from ``u`` is ``R`` times that of ``H`` from ``s``: the same tridiagonal ``T``, hence the same nodes and
    weights, as Lanczos on ``H`` from ``s``. ``u`` is the vector of the first product (Lanczos multiplies its
    start vector first). Costs two dot products per product.
    """

    def __init__(self, matvec: Callable[[Tensor], Tensor], start: Tensor) -> None:
        self.matvec, self.start = matvec, start
        self.w: Tensor | None = None

    def reflect(self, v: Tensor) -> Tensor:
        assert self.w is not None
        return v - 2.0 * self.w * (self.w @ v)

    def __call__(self, v: Tensor) -> Tensor:
        if self.w is None:
            diff = v - self.start
            norm = diff.norm()
            self.w = diff / norm if float(norm) > 0 else torch.zeros_like(v)  # u = s already: R = I
        return self.reflect(self.matvec(self.reflect(v)))


def slq(hvp: Callable[[Tensor], Tensor], dim: int, iters: int, runs: int, generator: torch.Generator, *,
        dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature of the symmetric operator ``hvp`` (flat ``(dim,)`` vectors in and out).

    Each run draws ``z ∈ {±1}^dim`` (``torch.randint`` on ``generator``, then Lanczos's own draws), runs
    ``m = min(iters, dim)`` Lanczos steps from ``z/√dim`` with full reorthogonalisation and returns the Gauss
    quadrature of its spectral measure: nodes ``λ_j`` (the eigenvalues of ``T``) and weights ``w_j = Q_{1j}²``.

    Args:
        hvp: ``v -> H v`` for a symmetric ``H``.
        dim: the dimension ``d`` of ``H``.
        iters: Lanczos steps per run (``m``; PyHessian: 100).
        runs: independent start vectors (``n_v``; PyHessian: 1).
        generator: the source of every random number (CPU generator; the global RNG is not used).
        dtype, device: of the vectors given to ``hvp`` (the operator's).

    Returns:
        ``(nodes, weights)``, float64 CPU tensors ``(runs, m)``, nodes ascending within a run; each run's weights
        sum to 1. Units: those of ``H``'s eigenvalues; weights are fractions of the ``dim`` eigenvalues.

    COST: ``runs · m`` products with ``hvp`` and ``O(runs · m² · dim)`` for the reorthogonalisation; memory
    ``m × dim``.
    """
    if dim < 1 or iters < 1 or runs < 1:
        raise ValueError(f"dim, iters and runs must be >= 1, got dim={dim}, iters={iters}, runs={runs}")
    device = torch.device("cpu") if device is None else torch.device(device)
    m = min(iters, dim)
    nodes = torch.zeros(runs, m, dtype=torch.float64)
    weights = torch.zeros(runs, m, dtype=torch.float64)
    for r in range(runs):
        # the draw of hessian_trace, so that run 0 sees its first vector for the same seed
        z = torch.randint(0, 2, (dim,), generator=generator).to(device=device, dtype=dtype) * 2 - 1
        values, vectors, _ = _lanczos(_Reflected(hvp, z / math.sqrt(dim)), dim, m, generator, dtype, device)
        n = len(values)
        nodes[r, :n] = values
        weights[r, :n] = vectors[0] ** 2
        if n < m:  # the basis spanned everything early (only by rounding): pad with weightless copies
            nodes[r, n:] = values[-1]
    return nodes, weights


def default_grid(nodes: Tensor, points: int = 10_000) -> Tensor:
    """PyHessian's grid: ``points`` values from (mean over runs of the smallest node) - 0.01 to (mean of the
    largest) + 0.01, float64."""
    nodes = torch.atleast_2d(nodes).double()
    lo = float(nodes.min(dim=1).values.mean()) - GRID_MARGIN
    hi = float(nodes.max(dim=1).values.mean()) + GRID_MARGIN
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def default_sigma2(grid: Tensor) -> float:
    """PyHessian's smoothing variance ``1e-5 · max(1, grid span)`` (eigenvalue units squared)."""
    return SIGMA2_SCALE * max(1.0, float(grid[-1] - grid[0]))


def density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma2: float | None = None) -> Tensor:
    """The smoothed spectral density ``φ(t) = mean_runs Σ_j w_j N(t; λ_j, σ²)`` at the points of ``grid``.

    ``nodes``/``weights`` as :func:`slq` returns them (``(runs, m)``, or ``(m,)`` for one run); ``sigma2``
    (the Gaussian's variance) defaults to :func:`default_sigma2` of ``grid``. A mixture of unit-mass Gaussians
    with weights summing to 1: it integrates to 1 over the real line (not renormalised to the grid, unlike
    PyHessian, so a grid that cuts off mass shows it). Multiply by the dimension for eigenvalue counts per unit.
    Float64, shaped like ``grid``.

    COST: ``runs · m · len(grid)`` Gaussian evaluations.
    """
    nodes, weights = torch.atleast_2d(nodes).double(), torch.atleast_2d(weights).double()
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} differ in shape")
    s2 = default_sigma2(grid) if sigma2 is None else float(sigma2)
    if s2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {s2}")
    t = grid.double().reshape(-1)
    gauss = torch.exp(-(t - nodes[..., None]) ** 2 / (2 * s2)) / math.sqrt(2 * math.pi * s2)  # (runs, m, G)
    return (weights[..., None] * gauss).sum(dim=1).mean(dim=0).reshape(grid.shape)


class SpectralDensity(NamedTuple):
    """SLQ of a loss Hessian: nodes and weights ``(runs, m)`` (float64 CPU) and the dimension ``d``."""

    nodes: Tensor
    weights: Tensor
    dim: int


def hessian_density(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, iters: int = 100,
                    runs: int = 1, seed: int = 0, params: Iterable[Tensor] | None = None) -> SpectralDensity:
    """:func:`slq` of the Hessian of ``mean(loss_fn(model(inputs), targets))`` w.r.t. ``params`` (default: all
    with ``requires_grad``), in eval mode, from ``torch.Generator().manual_seed(seed)``.

    Defaults are PyHessian's (``iters`` = 100 Lanczos steps, ``runs`` = 1 start vector). HVPs run in the
    parameters' dtype; ``T``'s eigendecomposition in float64. Writes no ``.grad``, restores train/eval flags,
    leaves the global RNG alone.

    COST: 1 forward, 1 backward with graph, ``runs · min(iters, d)`` HVPs; memory ``min(iters, d) × d``.
    """
    params = trainable_parameters(model, params)
    generator = torch.Generator().manual_seed(seed)
    with probe_mode(model):
        op = _Hessian(model, loss_fn, inputs, targets, params)
        nodes, weights = slq(op, op.dim, iters, runs, generator, dtype=op.dtype, device=op.device)
    return SpectralDensity(nodes, weights, op.dim)


def summarize(result: SpectralDensity, outlier: float = 0.1) -> dict[str, float]:
    """The probe's scalars (eigenvalue units unless said otherwise):

    - ``lambda_max``, ``lambda_min``: the extreme nodes over all runs (Ritz values lie inside the spectrum, so
      these bound it from inside and converge to its ends first).
    - ``trace_estimate``: ``d · mean_runs Σ_j w_j λ_j`` (Hutchinson's estimate with the runs' Rademacher vectors).
    - ``negative_mass``: the smoothed density's mass below 0, ``mean_runs Σ_j w_j Φ(-λ_j/σ)`` with PyHessian's
      ``σ`` (:func:`default_grid`, :func:`default_sigma2`): the fraction of eigenvalues that are negative, with
      nodes within a few ``σ`` of 0 counted in part, since their sign is not resolved (dimensionless).
    - ``outlier_mass``: the weight of the nodes with ``|λ_j| > outlier · max_j |λ_j|`` (mean over runs): the
      estimated fraction of eigenvalues beyond that threshold (``d ·`` it estimates their number). When those
      eigenvalues are resolved as nodes (isolated outliers) their weights are exactly ``(q_iᵀv)²``, unbiased
      over the start vectors; otherwise the quadrature adds at most the weight of a node next to the threshold.
    - ``outlier_nodes``: how many nodes lie beyond the threshold (mean over runs). Lanczos resolves each isolated
      eigenvalue as one node, so when a bulk near 0 stays inside the threshold this counts the outliers
      (Ghorbani et al. 2019 see them appear early without BatchNorm; about one per class, Papyan 2019) without
      the sampling noise of ``d · outlier_mass``. When the spectrum beyond the threshold is continuous (e.g. at
      initialisation) it counts quadrature nodes instead, at most ``iters``, and means little.
    """
    nodes, weights = result.nodes, result.weights
    sigma = math.sqrt(default_sigma2(default_grid(nodes, points=2)))
    below = 0.5 * torch.erfc(nodes / (sigma * math.sqrt(2.0)))  # Φ(-λ/σ)
    big = nodes.abs() > outlier * nodes.abs().max(dim=1, keepdim=True).values
    return {
        "lambda_max": float(nodes.max()),
        "lambda_min": float(nodes.min()),
        "trace_estimate": result.dim * float((weights * nodes).sum(dim=1).mean()),
        "negative_mass": float((weights * below).sum(dim=1).mean()),
        "outlier_mass": float((weights * big).sum(dim=1).mean()),
        "outlier_nodes": float(big.sum(dim=1).double().mean()),
    }


def write_density(path: Path, result: SpectralDensity, step: int) -> None:
    """Write the quadrature to ``path`` as JSON, atomically (:func:`trainlab.rundir.atomic.atomic_write_text`):
    ``{"step", "dim", "iters", "runs", "sigma2", "nodes": [[...] per run], "weights": [[...] per run]}``, with
    ``sigma2`` PyHessian's smoothing for :func:`density` on :func:`default_grid`. Floats round-trip exactly;
    non-finite values are written as null (strict JSON)."""
    def rows(t: Tensor) -> list[list[float | None]]:
        return [[v if math.isfinite(v) else None for v in row] for row in t.tolist()]

    record = {"step": step, "dim": result.dim, "iters": result.nodes.shape[1], "runs": result.nodes.shape[0],
              "sigma2": default_sigma2(default_grid(result.nodes, points=2)),
              "nodes": rows(result.nodes), "weights": rows(result.weights)}
    atomic_write_text(path, json.dumps(record, allow_nan=False) + "\n")


@register("hessian_density", summary="Hessian eigenvalue density by stochastic Lanczos quadrature on the probe batch: "
                                     "extreme eigenvalues, trace, negative mass, outliers; nodes and weights to "
                                     "hessian_density/step_N.json",
          cost="1 fwd + 1 bwd (with graph) + hessian_density_runs * hessian_density_iters Hessian-vector products",
          paper="Ghorbani et al. 2019, An Investigation into Neural Net Optimization via Hessian Eigenvalue Density")
def _hessian_density(ctx: ProbeContext) -> dict[str, float]:
    o = ctx.options
    result = hessian_density(ctx.model, ctx.loss_fn, ctx.x_train, ctx.y_train, iters=o.hessian_density_iters,
                             runs=o.hessian_density_runs, seed=o.seed)
    if ctx.run_dir is not None:
        write_density(ctx.run_dir / "hessian_density" / f"step_{ctx.step}.json", result, ctx.step)
    return summarize(result, outlier=o.hessian_density_outlier)
