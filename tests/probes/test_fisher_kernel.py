"""The neural Fisher kernel probe against an explicitly formed Fisher (per-example autograd loops) and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.losses.stablemax import stablemax, stablemax_cross_entropy
from trainlab.models import build
from trainlab.probes.data_diet import grand_scores
from trainlab.probes.fisher_kernel import fisher_kernel, predictive_probabilities
from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext
from trainlab.train.config import ProbeOptions
from trainlab.workloads.base import DataSpec


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target, reduction="none")


def lm_loss(output: Tensor, target: Tensor) -> Tensor:  # trainlab's LM loss: per token
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)


def half_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * (output - target).pow(2).sum(-1)


def scores_by_loop(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``G``: one autograd call per example of ``log softmax(f(x_i))[y_i]`` (summed over tokens for sequences)."""
    params = list(model.parameters())
    rows = []
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i:i + 1]), dim=-1)[0]
        ll = logp.reshape(-1, logp.shape[-1]).gather(-1, y[i].reshape(-1, 1)).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(ll, params)]))
    return torch.stack(rows)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()  # 38 parameters


@pytest.mark.parametrize("n", [10, 50])  # fewer and more examples than the 38 parameters
def test_the_spectrum_is_that_of_the_explicitly_formed_fisher(n):
    model = mlp()
    x, y = torch.randn(n, 3, dtype=torch.float64), torch.randint(0, 3, (n,))
    g = scores_by_loop(model, x, y)
    fisher = g.T @ g / n  # (38, 38), formed explicitly
    result = fisher_kernel(model, cross_entropy, x, y)
    torch.testing.assert_close(result.kernel, g @ g.T / n)
    expected = torch.linalg.eigvalsh(fisher).flip(0)
    r = min(n, 38)
    torch.testing.assert_close(result.eigenvalues[:r], expected[:r], rtol=1e-10, atol=1e-12)
    if n > r:
        assert float(result.eigenvalues[r:].abs().max()) < 1e-12  # K beyond the 38 dimensions of F is zero
    assert result.trace == pytest.approx(float(fisher.trace()), rel=1e-12)
    p = expected.clamp_min(0) / expected.clamp_min(0).sum()  # rank.py's effective rank, of F
    p = p[p > 0]
    assert result.effective_rank == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-8)
    torch.testing.assert_close(result.labels, y)


def test_the_diagonal_is_grand_squared():
    # with the true labels, n·K_ii = |∇ℓ_i|², Paul et al.'s GraNd, computed by data_diet's own vmapped code
    model = mlp(1)
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 3, (12,))
    result = fisher_kernel(model, cross_entropy, x, y)
    torch.testing.assert_close(12 * result.kernel.diag(), grand_scores(model, cross_entropy, x, y).double() ** 2)


def test_effective_rank_by_hand_on_orthogonal_scores():
    # a bias-free linear classifier at W = 0 predicts (½, ½), so g_i = (e_{y_i} - ½) ⊗ x_i with |e_y - ½|² = ½;
    # inputs x_i = a_i e_i are orthogonal, so K = diag(a_i²/2)/n
    model = nn.Linear(4, 2, bias=False).double()
    nn.init.zeros_(model.weight)
    y = torch.tensor([0, 1, 1, 0])
    x = torch.diag(torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    result = fisher_kernel(model, cross_entropy, x, y)
    torch.testing.assert_close(result.kernel, torch.diag(torch.tensor([0.5, 0.5, 2.0, 0.0], dtype=torch.float64)) / 4)
    torch.testing.assert_close(result.eigenvalues, torch.tensor([0.5, 0.125, 0.125, 0.0], dtype=torch.float64))
    # p = (4, 1, 1)/6: exp(-Σ p log p) = 6^(1/3) · 1.5^(2/3) = 13.5^(1/3)
    assert result.effective_rank == pytest.approx(13.5 ** (1 / 3), rel=1e-12)
    assert result.trace == pytest.approx(0.75)
    equal = fisher_kernel(model, cross_entropy, torch.eye(4, dtype=torch.float64), y)
    assert equal.effective_rank == pytest.approx(4.0, rel=1e-12)  # four equal eigenvalues


def test_sequence_scores_sum_the_token_log_likelihoods():
    torch.manual_seed(5)
    spec = DataSpec("tokens", (5,), 7, "lm", vocab_size=7)
    model = build("transformer", spec, n_layer=1, d_model=8, n_head=2, tie_embeddings=True).double()
    x, y = torch.randint(0, 7, (4, 5)), torch.randint(0, 7, (4, 5))
    g = scores_by_loop(model, x, y)
    result = fisher_kernel(model, lm_loss, x, y)
    torch.testing.assert_close(result.kernel, g @ g.T / 4)


def test_the_predictive_distribution_is_the_losss_likelihood():
    model = mlp(2)
    x = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(predictive_probabilities(model, cross_entropy, x), torch.softmax(model(x), -1).detach())

    def stablemax_loss(output: Tensor, target: Tensor) -> Tensor:
        return stablemax_cross_entropy(output, target)

    torch.testing.assert_close(predictive_probabilities(model, stablemax_loss, x), stablemax(model(x).detach()))
    with pytest.raises(ValueError, match="not a normalised"):  # label smoothing is no likelihood over classes
        predictive_probabilities(model, lambda o, t: F.cross_entropy(o, t, reduction="none", label_smoothing=0.2), x)


def test_model_labels_give_an_unbiased_fisher():
    # with labels drawn from p(·|x), E[tr K] = (1/n) Σ_i Σ_c p_ic |g_ic|², the trace of the Fisher information;
    # each draw's tr K is a mean of n independent terms, so its variance is (1/n²) Σ_i Var_c |g_ic|²
    model = mlp(3)
    n = 5
    x = torch.randn(n, 3, dtype=torch.float64)
    p = torch.softmax(model(x), -1).detach()
    norms = torch.stack([scores_by_loop(model, x, torch.full((n,), c)).pow(2).sum(1) for c in range(3)], dim=1)
    mean = float((p * norms).sum(1).mean())
    sd = math.sqrt(float(((p * norms**2).sum(1) - (p * norms).sum(1) ** 2).sum())) / n
    draws = 200
    targets = torch.zeros(n, dtype=torch.long)  # ignored: the labels are drawn
    traces, first = [], None
    for seed in range(draws):
        result = fisher_kernel(model, cross_entropy, x, targets, labels="model", seed=seed)
        traces.append(result.trace)
        first = result if first is None else first
    assert abs(sum(traces) / draws - mean) <= 4 * sd / math.sqrt(draws)
    assert first is not None and not torch.equal(first.labels, targets)
    # one draw is the kernel of an explicit Fisher at the drawn labels, and the seed reproduces it
    g = scores_by_loop(model, x, first.labels)
    again = fisher_kernel(model, cross_entropy, x, targets, labels="model", seed=0)
    torch.testing.assert_close(again.kernel, g @ g.T / n)


def context(model: nn.Module, loss_fn, x: Tensor, y: Tensor, **options) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=loss_fn, x_train=x, y_train=y, x_val=x, y_val=y, step=0, lr=0.1,
                        options=ProbeOptions(names=("nfk",), **options))


def test_the_probe_through_the_registry():
    model = mlp(4)
    model.train()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 3, (10,))
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    out = PROBES.get("nfk").factory(context(model, cross_entropy, x, y, nfk_examples=6, nfk_top=2))
    g = scores_by_loop(model, x[:6], y[:6])  # the first nfk_examples of the probe batch
    expected = torch.linalg.eigvalsh(g.T @ g / 6).flip(0)
    assert set(out) == {"eig1", "eig2", "trace", "effective_rank"}
    assert [out["eig1"], out["eig2"]] == pytest.approx(expected[:2].tolist(), rel=1e-10)
    assert out["trace"] == pytest.approx(float(expected.sum()), rel=1e-10)
    assert 1.0 <= out["effective_rank"] <= 6.0
    assert model.training and all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.equal(torch.get_rng_state(), rng)
    sampled = PROBES.get("nfk").factory(context(model, cross_entropy, x, y, nfk_examples=6, nfk_labels="model"))
    assert set(sampled) == {"eig1", "eig2", "eig3", "trace", "effective_rank"}


def test_regression_true_labels_by_hand_and_model_labels_do_not_apply():
    # f = wᵀx + b with ½(f - y)² (a unit-variance Gaussian likelihood): g_i = -(f_i - y_i)·(x_i, 1)
    torch.manual_seed(6)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    xt = torch.cat([x, torch.ones(8, 1, dtype=torch.float64)], dim=1)
    g = -(model(x) - y).detach() * xt
    out = PROBES.get("nfk").factory(context(model, half_squared_error, x, y))
    assert out["trace"] == pytest.approx(float((g**2).sum()) / 8, rel=1e-10)
    assert out["eig1"] == pytest.approx(float(torch.linalg.eigvalsh(g.T @ g / 8)[-1]), rel=1e-10)
    with pytest.raises(NotApplicable, match="real-valued") as err:
        PROBES.get("nfk").factory(context(model, half_squared_error, x, y, nfk_labels="model"))
    assert "\n" not in str(err.value)


def test_a_loss_that_is_no_likelihood_does_not_apply_with_model_labels():
    model = mlp(7)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))

    def smoothed(output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target, reduction="none", label_smoothing=0.2)

    with pytest.raises(NotApplicable, match="normalised"):
        PROBES.get("nfk").factory(context(model, smoothed, x, y, nfk_labels="model"))
    assert set(PROBES.get("nfk").factory(context(model, smoothed, x, y))) >= {"trace", "effective_rank"}
