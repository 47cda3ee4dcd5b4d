"""SLQ Hessian density against a dense eigendecomposition (torch.autograd.functional.hessian) and closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from trainlab.models import build
from trainlab.probes.hessian import hessian_trace
from trainlab.probes.registry import PROBES, ProbeContext
from trainlab.probes.spectral_density import (
    SpectralDensity,
    default_grid,
    default_sigma2,
    density,
    hessian_density,
    slq,
    summarize,
)
from trainlab.train.config import ProbeOptions
from trainlab.workloads.base import DataSpec


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target, reduction="none")


def half_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * (output - target).pow(2).sum(-1)


def dense_hessian(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """The Hessian of the mean loss w.r.t. all parameters, flattened in ``model.parameters()`` order."""
    named = [(n, p.shape) for n, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: Tensor) -> Tensor:
        values, i = {}, 0
        for name, shape in named:
            values[name] = flat[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return loss_fn(functional_call(model, values, (x,)), y).mean()

    return torch.autograd.functional.hessian(loss, flat0, vectorize=True)


def rademacher(dim: int, seed: int) -> Tensor:
    """The first start vector ``z`` that ``slq`` draws from ``torch.Generator().manual_seed(seed)``."""
    return torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1


def weighted_cdf(t: float, eigenvalues: Tensor, eigenvectors: Tensor, v: Tensor) -> float:
    """``μ_v((-∞, t]) = Σ_{λ_i <= t} (q_iᵀv)²``: the exact spectral measure of ``v`` from the dense eigenpairs."""
    return float(((eigenvectors.T @ v) ** 2)[eigenvalues <= t].sum())


@pytest.fixture(scope="module")
def net():
    """A float64 tanh MLP 4-12-12-3 (255 parameters), cross-entropy on 32 examples; its dense Hessian and eigh."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    h = dense_hessian(model, cross_entropy, x, y)
    lam, q = torch.linalg.eigh(h)
    return model, x, y, h, lam, q


def test_weights_sum_to_one_and_nodes_lie_inside_the_dense_spectrum(net):
    _, _, _, h, lam, _ = net
    nodes, weights = slq(lambda v: h @ v, h.shape[0], 30, 5, torch.Generator().manual_seed(1))
    assert nodes.shape == weights.shape == (5, 30)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (weights >= 0).all()
    slack = 1e-10 * float(lam.abs().max())
    assert float(nodes.min()) >= float(lam[0]) - slack and float(nodes.max()) <= float(lam[-1]) + slack
    # the extreme eigenvalues converge first: 30 of 255 steps pin the largest
    assert float(nodes.max()) == pytest.approx(float(lam[-1]), rel=1e-6)


def test_with_iters_equal_to_the_dimension_the_nodes_are_the_eigenvalues(net):
    model, x, y, h, lam, q = net
    d = h.shape[0]
    nodes, weights = slq(lambda v: h @ v, d, d, 1, torch.Generator().manual_seed(2))
    tol = 1e-10 * float(lam.abs().max())
    torch.testing.assert_close(nodes[0], lam, rtol=0, atol=tol)  # 16 exact zeros: restarts find multiplicities
    # ... and the weights are the exact spectral measure of the start vector z/√d: compare the two CDFs in every gap
    v = rademacher(d, 2) / math.sqrt(d)
    gaps = (lam[1:] - lam[:-1]) > 1e-8
    for t in (0.5 * (lam[:-1] + lam[1:]))[gaps].tolist():
        assert float(weights[0][nodes[0] <= t].sum()) == pytest.approx(weighted_cdf(t, lam, q, v), abs=1e-10)
    # through the model's own Hessian-vector products (double backprop), not the dense matrix
    result = hessian_density(model, cross_entropy, x, y, iters=d, runs=1, seed=2)
    assert result.dim == d
    torch.testing.assert_close(result.nodes[0], lam, rtol=0, atol=1e-8)


def test_the_trace_estimate_is_hutchinsons_on_the_same_rademacher_vector(net):
    model, x, y, h, _, _ = net
    d = h.shape[0]
    z = rademacher(d, 3)
    for iters in (1, 5, 40):  # Gauss quadrature is exact for f(λ) = λ at any number of nodes
        nodes, weights = slq(lambda v: h @ v, d, iters, 1, torch.Generator().manual_seed(3))
        assert d * float((weights * nodes).sum()) == pytest.approx(float(z @ h @ z), rel=1e-10)
    result = hessian_density(model, cross_entropy, x, y, iters=10, seed=3)
    expected = hessian_trace(model, cross_entropy, x, y, samples=1, seed=3).mean
    assert d * float((result.weights * result.nodes).sum()) == pytest.approx(expected, rel=1e-10)


def test_the_trace_estimate_is_unbiased_within_its_closed_form_variance(net):
    _, _, _, h, _, _ = net
    d, runs = h.shape[0], 400
    nodes, weights = slq(lambda v: h @ v, d, 2, runs, torch.Generator().manual_seed(4))
    estimates = d * (weights * nodes).sum(dim=1)
    # Var(zᵀHz) = 2 Σ_{i≠k} H_ik² for Rademacher z (Hutchinson 1989)
    sd = math.sqrt(2 * float((h**2).sum() - (h.diag() ** 2).sum()))
    assert abs(float(estimates.mean()) - float(h.trace())) <= 4 * sd / math.sqrt(runs)
    assert float(estimates.std()) == pytest.approx(sd, rel=0.25)  # sample sd of 400 draws: ~±10% (1 sd)


def test_the_quadrature_cdf_is_bracketed_by_adjacent_weights(net):
    # Chebyshev-Markov-Stieltjes: between consecutive Gauss nodes λ_k < t < λ_{k+1}, the exact measure's CDF
    # differs from the quadrature's by at most max(w_k, w_{k+1})
    _, _, _, h, lam, q = net
    d = h.shape[0]
    nodes, weights = slq(lambda v: h @ v, d, 30, 1, torch.Generator().manual_seed(5))
    nodes, weights = nodes[0], weights[0]
    v = rademacher(d, 5) / math.sqrt(d)
    cuts = [float(nodes[0]) - 1.0, *(0.5 * (nodes[:-1] + nodes[1:])).tolist(), float(nodes[-1]) + 1.0]
    for k, t in enumerate(cuts):
        bound = max(float(weights[k - 1]) if k > 0 else 0.0, float(weights[k]) if k < len(nodes) else 0.0)
        assert abs(float(weights[:k].sum()) - weighted_cdf(t, lam, q, v)) <= bound + 1e-12


def test_the_density_integrates_to_one_and_its_cdf_matches_the_dense_histogram(net):
    _, _, _, h, lam, q = net
    d, runs = h.shape[0], 40
    nodes, weights = slq(lambda v: h @ v, d, 30, runs, torch.Generator().manual_seed(6))
    sigma2 = default_sigma2(default_grid(nodes))
    sigma = math.sqrt(sigma2)
    grid = torch.linspace(float(nodes.min()) - 12 * sigma, float(nodes.max()) + 12 * sigma, 40_001,
                          dtype=torch.float64)
    phi = density(nodes, weights, grid, sigma2)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(phi, grid)])
    assert float(cdf[-1]) == pytest.approx(1.0, abs=1e-6)
    assert d * float(cdf[-1]) == pytest.approx(d, abs=1e-3)  # times d: the eigenvalue count
    # Half the spectrum sits within ±0.01 of 0 (one node carries it), so compare in the tails: between two
    # eigenvalues at the 5, 10, 90 and 95% quantiles. Tolerance, term by term (each per run, averaged):
    # smoothing Σ_j w_j Φ(-|t-λ_j|/σ) + quadrature max(adjacent weights) (Chebyshev-Markov-Stieltjes)
    # + 4 standard deviations of the mean over runs of μ_v((-∞, t]), Var = 2(|S| - Σ_k P_kk²)/d² for the
    # projector P on the eigenvalues <= t + 1e-4 for the trapezoid rule.
    for level in (0.05, 0.1, 0.9, 0.95):
        k = int(level * d)
        t = 0.5 * float(lam[k - 1] + lam[k])
        below = lam <= t
        proj = q[:, below] @ q[:, below].T
        sd = math.sqrt(2 * (int(below.sum()) - float((proj.diag() ** 2).sum()))) / d / math.sqrt(runs)
        smoothing = float((weights * 0.5 * torch.erfc((nodes - t).abs() / (sigma * math.sqrt(2)))).sum(1).mean())
        count = (nodes <= t).sum(dim=1)
        padded = torch.cat([torch.zeros(runs, 1, dtype=torch.float64), weights,
                            torch.zeros(runs, 1, dtype=torch.float64)], dim=1)
        rows = torch.arange(runs)
        quadrature = float(torch.maximum(padded[rows, count], padded[rows, count + 1]).mean())
        tolerance = smoothing + quadrature + 4 * sd + 1e-4
        assert tolerance < 0.06  # a test that can fail: the bound is tight in the tails
        smoothed = float(cdf[torch.searchsorted(grid, torch.tensor(t, dtype=torch.float64))])
        assert abs(smoothed - float(below.double().mean())) <= tolerance, (level, smoothed, tolerance)


def test_density_by_hand():
    grid = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    # one run, one node at 0: the Gaussian itself; default σ² = 1e-5 · max(1, span 2) = 2e-5
    assert default_sigma2(grid) == pytest.approx(2e-5)
    assert default_sigma2(torch.tensor([0.0, 0.5])) == pytest.approx(1e-5)
    phi = density(torch.tensor([0.0]), torch.tensor([1.0]), grid, sigma2=0.25)
    expected = torch.exp(-grid**2 / 0.5) / math.sqrt(2 * math.pi * 0.25)
    torch.testing.assert_close(phi, expected)
    # two runs are averaged; weights scale each node's Gaussian
    nodes = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    phi = density(nodes, weights, grid, sigma2=0.25)

    def n(t: Tensor, mu: float) -> Tensor:
        return torch.exp(-(t - mu) ** 2 / 0.5) / math.sqrt(2 * math.pi * 0.25)

    torch.testing.assert_close(phi, 0.5 * (0.25 * n(grid, 0) + 0.75 * n(grid, 1) + 0.5 * n(grid, -1) + 0.5 * n(grid, 0)))
    grid = default_grid(nodes, points=3)  # PyHessian: mean smallest node - 0.01 .. mean largest + 0.01
    torch.testing.assert_close(grid, torch.tensor([-0.51, 0.0, 0.51], dtype=torch.float64))


def test_outliers_of_a_constructed_spectrum():
    # a bulk of 197 eigenvalues in [-0.05, 0.05] and three outliers 1, 2, 3, in a random eigenbasis: 40 Lanczos
    # steps resolve each outlier as one node, and d · outlier_mass estimates their number 3 without bias
    torch.manual_seed(3)
    d, runs = 200, 50
    lam = torch.cat([torch.linspace(-0.05, 0.05, d - 3, dtype=torch.float64),
                     torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)])
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    h = q @ torch.diag(lam) @ q.T
    nodes, weights = slq(lambda v: h @ v, d, 40, runs, torch.Generator().manual_seed(0))
    out = summarize(SpectralDensity(nodes, weights, d), outlier=0.1)
    assert out["outlier_nodes"] == 3.0
    assert out["lambda_max"] == pytest.approx(3.0, rel=1e-10) and out["lambda_min"] >= -0.05 - 1e-12
    # Var(zᵀPz) = 2(|P|_F² - Σ P_kk²) <= 2·3 for the projector P on the outliers: sd of the mean <= √6/√runs
    assert abs(d * out["outlier_mass"] - 3.0) <= 4 * math.sqrt(6 / runs)
    # half the bulk is negative (98 eigenvalues, and the one at 0 counts half): 4 sd of the 50-run mean (rank of the
    # projector <= 99) plus the weight of one bulk node next to 0 (Chebyshev-Markov-Stieltjes)
    tolerance = 4 * math.sqrt(2 * 99) / d / math.sqrt(runs) + float(weights[nodes.abs() < 0.06].max())
    assert tolerance < 0.2
    assert abs(out["negative_mass"] - (d - 3) / 2 / d) <= tolerance


def context(model: nn.Module, loss_fn, x: Tensor, y: Tensor, run_dir: Path | None = None, **options) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=loss_fn, x_train=x, y_train=y, x_val=x, y_val=y, step=7, lr=0.1,
                        options=ProbeOptions(names=("hessian_density",), **options), run_dir=run_dir)


def test_the_probe_through_the_registry_writes_the_density(net, tmp_path):
    model, x, y, h, lam, q = net
    d = h.shape[0]
    flags = [m.training for m in model.modules()]
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    ctx = context(model, cross_entropy, x, y, run_dir=tmp_path, hessian_density_iters=d, seed=9)
    out = PROBES.get("hessian_density").factory(ctx)
    assert set(out) == {"lambda_max", "lambda_min", "trace_estimate", "negative_mass", "outlier_mass",
                        "outlier_nodes"}
    assert out["lambda_max"] == pytest.approx(float(lam[-1]), abs=1e-10)
    assert out["lambda_min"] == pytest.approx(float(lam[0]), abs=1e-10)
    assert out["trace_estimate"] == pytest.approx(hessian_trace(model, cross_entropy, x, y, samples=1, seed=9).mean,
                                                  rel=1e-10)
    # with all d nodes the weights are (q_iᵀv)²: the negative mass and outliers follow from the dense eigenpairs
    v = rademacher(d, 9) / math.sqrt(d)
    mass = (q.T @ v) ** 2
    sigma = math.sqrt(1e-5 * max(1.0, float(lam[-1] - lam[0]) + 0.02))
    assert out["negative_mass"] == pytest.approx(float((mass * 0.5 * torch.erfc(lam / (sigma * math.sqrt(2)))).sum()),
                                                 abs=1e-10)
    big = lam.abs() > 0.1 * float(lam.abs().max())
    assert out["outlier_nodes"] == int(big.sum())
    assert out["outlier_mass"] == pytest.approx(float(mass[big].sum()), abs=1e-10)
    # the file: nodes and weights per run, atomically written (no temporary left behind)
    path = tmp_path / "hessian_density" / "step_7.json"
    record = json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["step_7.json"]
    assert (record["step"], record["dim"], record["iters"], record["runs"]) == (7, d, d, 1)
    torch.testing.assert_close(torch.tensor(record["nodes"][0], dtype=torch.float64), lam, rtol=0, atol=1e-10)
    assert sum(record["weights"][0]) == pytest.approx(1.0, abs=1e-12)
    assert record["sigma2"] == pytest.approx(sigma**2)
    # the probe leaves the model, its modes and the global RNG alone
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.equal(torch.get_rng_state(), rng)


def test_regression_matches_the_closed_form_hessian_of_least_squares():
    # f = wᵀx + b, loss mean ½(f - y)²: H = mean x̃x̃ᵀ with x̃ = (x, 1), whatever y is. Like the hessian probe, the
    # density applies to any loss and model: no NotApplicable for regression targets or token inputs.
    torch.manual_seed(1)
    model = nn.Linear(5, 1).double()
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    xt = torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], dim=1)
    lam = torch.linalg.eigvalsh(xt.T @ xt / 20)
    out = PROBES.get("hessian_density").factory(context(model, half_squared_error, x, y, hessian_density_iters=6))
    assert out["lambda_max"] == pytest.approx(float(lam[-1]), rel=1e-10)
    assert out["lambda_min"] == pytest.approx(float(lam[0]), rel=1e-10)
    assert out["negative_mass"] < 1e-12  # positive definite


def test_token_models_run():
    torch.manual_seed(5)
    spec = DataSpec("tokens", (5,), 7, "lm", vocab_size=7)
    model = build("transformer", spec, n_layer=1, d_model=8, n_head=2, tie_embeddings=True)
    x, y = torch.randint(0, 7, (3, 5)), torch.randint(0, 7, (3, 5))

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")

    out = PROBES.get("hessian_density").factory(context(model, loss_fn, x, y, hessian_density_iters=8,
                                                        hessian_density_runs=2))
    assert all(math.isfinite(v) for v in out.values())
    assert out["lambda_min"] <= out["lambda_max"] and 0.0 <= out["negative_mass"] <= 1.0
