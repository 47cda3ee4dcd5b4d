"""Hessian probes against a dense Hessian (torch.autograd.functional.hessian) and closed forms."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from trainlab.models import build
from trainlab.probes.hessian import (
    TraceEstimate,
    directional_sharpness,
    edge_of_stability_ratio,
    hessian_top_eigenvalues,
    hessian_trace,
    hvp,
)
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


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture
def tiny():
    """A float64 tanh MLP 3-5-2 (32 parameters) with cross-entropy on 16 examples, and its dense Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    return model, x, y, dense_hessian(model, cross_entropy, x, y)


def test_hvp_matches_dense_hessian_times_vector(tiny):
    model, x, y, hessian = tiny
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    loss = cross_entropy(model(x), y).mean()
    hv = hvp(loss, params, v)
    torch.testing.assert_close(flat(hv), hessian @ flat(v), rtol=1e-10, atol=1e-12)
    # the graph is retained: a second product on the same loss works and is linear in v
    torch.testing.assert_close(flat(hvp(loss, params, [2 * t for t in v])), 2 * flat(hv))


def test_hvp_of_a_parameter_the_loss_ignores_is_zero():
    used, unused = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.ones(3))
    loss = (used**3).sum()  # H = diag(6·used)
    hv = hvp(loss, [used, unused], [torch.ones(2), torch.ones(3)])
    torch.testing.assert_close(hv[0], torch.tensor([6.0, 12.0]))
    torch.testing.assert_close(hv[1], torch.zeros(3))


def test_lanczos_is_exact_when_iters_cover_the_dimension(tiny):
    model, x, y, hessian = tiny
    dense = torch.linalg.eigvalsh(hessian).flip(0)
    top = hessian_top_eigenvalues(model, cross_entropy, x, y, k=5, iters=32)
    assert top.shape == (5,) and torch.all(top[:-1] >= top[1:])
    torch.testing.assert_close(top, dense[:5], rtol=1e-8, atol=1e-10)


def test_lanczos_eigenvectors_are_eigenvectors(tiny):
    model, x, y, hessian = tiny
    values, vectors = hessian_top_eigenvalues(model, cross_entropy, x, y, k=2, iters=32, return_eigenvectors=True)
    assert [t.shape for t in vectors[0]] == [p.shape for p in model.parameters()]
    for value, vector in zip(values, vectors):
        u = flat(vector)
        assert u.norm().item() == pytest.approx(1.0, abs=1e-8)
        torch.testing.assert_close(hessian @ u, value.item() * u, rtol=0, atol=1e-8)


def test_repeated_eigenvalues_are_found_with_their_multiplicity():
    # f(x) = Wx + b with 0.5·||y - f||²: H = I_C ⊗ mean([x;1][x;1]ᵀ), every eigenvalue C-fold. A single Krylov
    # sequence sees each distinct eigenvalue once; the restart must find the copies.
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    dense = torch.linalg.eigvalsh(dense_hessian(model, half_squared_error, x, y)).flip(0)
    assert dense[0].item() == pytest.approx(dense[1].item())  # the premise: a double top eigenvalue
    top = hessian_top_eigenvalues(model, half_squared_error, x, y, k=4, iters=8)
    torch.testing.assert_close(top, dense[:4], rtol=1e-8, atol=1e-10)


def test_lanczos_top_eigenvalue_converges_in_few_iterations_on_a_trainlab_mlp():
    torch.manual_seed(2)
    model = build("mlp", DataSpec("vector", (8,), 4, "classification"), depth=1, width=16)  # 212 parameters
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    dense = torch.linalg.eigvalsh(dense_hessian(model.double(), cross_entropy, x.double(), y)).flip(0)
    model.float()
    top = hessian_top_eigenvalues(model, cross_entropy, x, y, k=1, iters=20, seed=3)
    assert top.item() == pytest.approx(dense[0].item(), rel=1e-3)
    # the seed only changes the start vector
    assert hessian_top_eigenvalues(model, cross_entropy, x, y, iters=20, seed=4).item() == pytest.approx(
        dense[0].item(), rel=1e-3)


def test_k_larger_than_iterations_is_refused(tiny):
    model, x, y, _ = tiny
    with pytest.raises(ValueError, match="Lanczos steps"):
        hessian_top_eigenvalues(model, cross_entropy, x, y, k=5, iters=4)


def test_hutchinson_trace_within_its_standard_error(tiny):
    model, x, y, hessian = tiny
    est = hessian_trace(model, cross_entropy, x, y, samples=200, seed=0)
    assert isinstance(est, TraceEstimate) and est.samples == 200
    exact = hessian.trace().item()
    assert abs(est.mean - exact) < 4 * est.stderr  # fails by chance with probability ~6e-5
    # the standard error estimates the known one: Var(zᵀHz) = 2 Σ_{i≠j} H_ij² for Rademacher z
    off = hessian - torch.diag(hessian.diagonal())
    true_stderr = math.sqrt(2 * off.pow(2).sum().item() / 200)
    assert 0.7 * true_stderr < est.stderr < 1.3 * true_stderr


class Scale(nn.Module):
    """``f(x) = w ⊙ x``: with squared error the Hessian is diagonal, ``diag(mean x²)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x


def test_hutchinson_is_exact_on_a_diagonal_hessian():
    torch.manual_seed(3)
    model = Scale(7)
    x, y = torch.randn(20, 7, dtype=torch.float64), torch.randn(20, 7, dtype=torch.float64)
    est = hessian_trace(model, half_squared_error, x, y, samples=5)
    assert est.mean == pytest.approx(x.pow(2).mean(0).sum().item(), rel=1e-12)
    assert est.stderr == pytest.approx(0.0, abs=1e-12)


def fixed_sample_reference(hessian: Tensor, samples: int, seed: int) -> tuple[float, float]:
    """The fixed-count estimate from the dense Hessian, with the documented draws: Rademacher vectors from
    ``torch.Generator().manual_seed(seed)`` (``randint(0, 2) * 2 - 1``, one vector after another)."""
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(samples):
        z = torch.randint(0, 2, (hessian.shape[0],), generator=generator).double() * 2 - 1
        draws.append((z @ hessian @ z).item())
    values = torch.tensor(draws, dtype=torch.float64)
    return values.mean().item(), (values.std(correction=1) / math.sqrt(samples)).item()


@pytest.fixture
def noisy():
    """A float64 tanh MLP 4-6-3 (51 parameters), squared error on 64 examples: one Hutchinson draw has a relative
    standard deviation of about 0.46, so a 1% standard error takes about 2000 draws."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    return model, x, y, dense_hessian(model, half_squared_error, x, y)


@pytest.mark.parametrize("seed", range(4))
def test_hutchinson_draws_until_its_standard_error_is_small(noisy, seed):
    model, x, y, hessian = noisy
    exact = hessian.trace().item()
    off = hessian - torch.diag(hessian.diagonal())
    draw_std = math.sqrt(2 * off.pow(2).sum().item())  # Var(zᵀHz) = 2 Σ_{i≠j} H_ij² for Rademacher z
    needed = (draw_std / (0.01 * abs(exact))) ** 2  # about 2100 draws
    est = hessian_trace(model, half_squared_error, x, y, samples=10, seed=seed, rel_se=0.01, max_samples=10_000)
    assert est.converged and est.samples > 10
    assert est.stderr <= 0.01 * abs(est.mean)
    assert 0.6 * needed < est.samples < 1.5 * needed  # it stopped near where the rule says, not at the cap
    assert abs(est.mean - exact) < 4 * est.stderr  # the sequential rule's bias is far below this
    # the draws are those of the fixed-count estimate with the same seed: stopping only chose the count
    assert (est.mean, est.stderr) == pytest.approx(fixed_sample_reference(hessian, est.samples, seed), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 7])
def test_hutchinson_rel_se_zero_draws_exactly_samples(tiny, seed):
    model, x, y, hessian = tiny
    est = hessian_trace(model, cross_entropy, x, y, samples=10, seed=seed, rel_se=0.0, max_samples=2)
    assert est.samples == 10 and est.converged  # no target: max_samples is not read
    assert est == hessian_trace(model, cross_entropy, x, y, samples=10, seed=seed)  # the function's default is off
    assert (est.mean, est.stderr) == pytest.approx(fixed_sample_reference(hessian, 10, seed), rel=1e-9)


def test_hutchinson_max_samples_caps_the_count(tiny):
    model, x, y, hessian = tiny  # one draw's relative standard deviation is ~1.5: 1% would take ~21000 draws
    est = hessian_trace(model, cross_entropy, x, y, samples=3, seed=2, rel_se=0.01, max_samples=25)
    assert est.samples == 25 and not est.converged
    assert est.stderr > 0.01 * abs(est.mean)
    fixed = hessian_trace(model, cross_entropy, x, y, samples=25, seed=2)
    assert (est.mean, est.stderr) == (fixed.mean, fixed.stderr)


def test_hutchinson_stops_at_the_minimum_when_the_target_is_met_at_once():
    torch.manual_seed(3)
    model = Scale(7)  # diagonal Hessian: every draw is the trace, the standard error is 0
    x, y = torch.randn(20, 7, dtype=torch.float64), torch.randn(20, 7, dtype=torch.float64)
    one = hessian_trace(model, half_squared_error, x, y, samples=1, rel_se=0.01)
    assert one.samples == 2 and one.converged  # the minimum is at least 2: one draw has no standard error
    five = hessian_trace(model, half_squared_error, x, y, samples=5, rel_se=0.01)
    assert five.samples == 5 and five.mean == pytest.approx(x.pow(2).mean(0).sum().item(), rel=1e-12)


def test_hutchinson_refuses_bad_stopping_options(tiny):
    model, x, y, _ = tiny
    for rel_se in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="rel_se"):
            hessian_trace(model, cross_entropy, x, y, rel_se=rel_se)
    with pytest.raises(ValueError, match="max_samples"):
        hessian_trace(model, cross_entropy, x, y, samples=10, rel_se=0.01, max_samples=9)


@pytest.mark.parametrize("arg", ["probes.hutchinson_rel_se=-0.01", "probes.hutchinson_rel_se=nan",
                                 "probes.hutchinson_rel_se=1", "probes.hutchinson_max_samples=1",
                                 "probes.hutchinson_max_samples=2.5"])
def test_hutchinson_options_are_validated(arg):
    from trainlab.config import ConfigError
    from trainlab.train.config import from_cli

    with pytest.raises(ConfigError) as err:
        from_cli(None, ["workload.p=11", arg])
    assert err.value.key == arg.split("=")[0] and "\n" not in str(err.value)


def test_hessian_trace_probe_reports_the_count_and_the_target(tiny):
    from trainlab.probes.registry import PROBES, ProbeContext
    from trainlab.train.config import from_cli

    model, x, y, hessian = tiny
    options = from_cli(None, ["workload.p=11"]).probes
    assert (options.hutchinson_samples, options.hutchinson_rel_se, options.hutchinson_max_samples) == (10, 0.02, 100)
    probe = PROBES.get("hessian_trace").factory
    out = probe(ProbeContext(model, cross_entropy, x, y, x, y, step=0, lr=0.1, options=options))
    assert out["samples"] == 100 and out["converged"] == 0.0  # the default cap bounds the cost of a noisy Hessian
    assert out["mean"] == pytest.approx(fixed_sample_reference(hessian, 100, options.seed)[0], rel=1e-9)
    fixed = replace(options, hutchinson_rel_se=0.0)
    out = probe(ProbeContext(model, cross_entropy, x, y, x, y, step=0, lr=0.1, options=fixed))
    assert out["samples"] == 10 and out["converged"] == 1.0
    assert out["mean"] == pytest.approx(fixed_sample_reference(hessian, 10, options.seed)[0], rel=1e-9)


def test_edge_of_stability_ratio():
    assert edge_of_stability_ratio(2 / 0.01, 0.01) == pytest.approx(1.0)
    assert edge_of_stability_ratio(50.0, 0.01) == pytest.approx(0.25)
    assert edge_of_stability_ratio(380.0, 0.01, momentum=0.9) == pytest.approx(1.0)  # threshold (2 + 2β)/η


def test_directional_sharpness_is_the_rayleigh_quotient(tiny):
    model, x, y, hessian = tiny
    update = [torch.randn_like(p) for p in model.parameters()]
    u = flat(update)
    expected = (u @ hessian @ u / (u @ u)).item()
    assert directional_sharpness(model, cross_entropy, x, y, update) == pytest.approx(expected, rel=1e-9)
    # invariant to the scale and sign of the step
    scaled = [-1e-3 * t for t in update]
    assert directional_sharpness(model, cross_entropy, x, y, scaled) == pytest.approx(expected, rel=1e-9)
    # along the top eigenvector it is the sharpness
    values, vectors = hessian_top_eigenvalues(model, cross_entropy, x, y, k=1, iters=32, return_eigenvectors=True)
    assert directional_sharpness(model, cross_entropy, x, y, vectors[0]) == pytest.approx(values[0].item(), rel=1e-8)
    zero = [torch.zeros_like(p) for p in model.parameters()]
    assert math.isnan(directional_sharpness(model, cross_entropy, x, y, zero))
    with pytest.raises(ValueError, match="shapes"):
        directional_sharpness(model, cross_entropy, x, y, update[:-1])


def test_params_restrict_the_hessian_to_a_block(tiny):
    model, x, y, hessian = tiny
    last = list(model[2].parameters())  # the last 12 coordinates
    block = hessian[-12:, -12:]
    top = hessian_top_eigenvalues(model, cross_entropy, x, y, k=2, iters=12, params=last)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(block).flip(0)[:2], rtol=1e-8, atol=1e-10)
    est = hessian_trace(model, cross_entropy, x, y, samples=3, params=last)
    assert abs(est.mean - block.trace().item()) < 5 * est.stderr + 1e-12


def test_probes_leave_training_untouched():
    torch.manual_seed(4)
    model = build("mlp", DataSpec("vector", (6,), 3, "classification"), depth=2, width=8)
    model.body.add_module("drop", nn.Dropout(0.5))  # would consume the RNG and randomise the loss in train mode
    model.train()
    model.body.fc0.eval()  # a mixed state must come back as it was
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    cross_entropy(model(x), y).mean().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()

    first = hessian_top_eigenvalues(model, cross_entropy, x, y, k=2, iters=10)
    hessian_trace(model, cross_entropy, x, y, samples=3)
    directional_sharpness(model, cross_entropy, x, y, [torch.ones_like(p) for p in model.parameters()])

    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == flags
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and torch.equal(p.grad, grads[n])
    # eval mode makes the probe a deterministic function of its seed
    torch.testing.assert_close(hessian_top_eigenvalues(model, cross_entropy, x, y, k=2, iters=10), first)


def test_transformer_hvp_matches_finite_differences_and_lanczos_runs():
    # the fused CPU attention has no double backward: the probes must switch to the math backend
    torch.manual_seed(5)
    spec = DataSpec("tokens", (5,), 7, "lm", vocab_size=7)
    model = build("transformer", spec, n_layer=1, d_model=8, n_head=2, tie_embeddings=True).double()
    x, y = torch.randint(0, 7, (3, 5)), torch.randint(0, 7, (3, 5))

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:  # trainlab's LM loss: per-token
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")

    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    values, vectors = hessian_top_eigenvalues(model, loss_fn, x, y, k=1, iters=15, return_eigenvectors=True)

    def gradient(shift: float) -> Tensor:
        with torch.no_grad():
            for p, t in zip(params, v):
                p.add_(shift * t)
        g = torch.autograd.grad(loss_fn(model(x), y).mean(), params)
        with torch.no_grad():
            for p, t in zip(params, v):
                p.sub_(shift * t)
        return flat(g)

    eps = 1e-7  # central differences err by O(eps²·f'''), and f''' is large at GPT-2's small init
    finite = (gradient(eps) - gradient(-eps)) / (2 * eps)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        exact = flat(hvp(loss_fn(model(x), y).mean(), params, v))
    torch.testing.assert_close(exact, finite, rtol=1e-5, atol=1e-6)
    # the Ritz pair satisfies Rayleigh's quotient: uᵀHu = λ for the unit Ritz vector
    assert directional_sharpness(model, loss_fn, x, y, vectors[0]) == pytest.approx(values[0].item(), rel=1e-6)
    assert values[0].item() > 0
