"""The federated client's local update (trainlab.federated.client) against references it does not share code with.

References: the analytic gradient of a linear model under MSE; a hand loop with ``torch.optim.SGD`` over batches
drawn by the documented rule (a ``torch.Generator`` seeded with the job's seed, one ``randperm`` per epoch, the
tail of an epoch shorter than a batch skipped); FedProx's and FedSpeed's update formulas (Li et al. 2020; Sun et
al. 2023) evaluated by hand in float64 NumPy on a quadratic ``f(x) = 1/2 x^T A x - b^T x``.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from trainlab.federated.client import (CLIENT_RULES, ClientJob, ClientResult, LocalSpec, flat_params, load_flat_,
                                       local_update)


def mse(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    return ((model(xb) - yb) ** 2).mean()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def data(n: int, d_in: int = 3, d_out: int = 2, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen), torch.randn(n, d_out, generator=gen)


def sent_weights(model: nn.Module, seed: int = 2) -> Tensor:
    """Server weights that differ from the model's current ones (local_update must load them itself)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(sum(p.numel() for p in model.parameters()), generator=gen) * 0.5


def documented_batches(n: int, batch_size: int, steps: int, seed: int) -> list[Tensor | None]:
    """The batch rule as the module documents it, written out independently."""
    if n <= batch_size:
        return [None] * steps
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor | None] = []
    per_epoch = n // batch_size
    perm = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(n, generator=gen)
        k = step % per_epoch
        out.append(perm[k * batch_size:(k + 1) * batch_size])
    return out


class Quadratic(nn.Module):
    """x (two parameter tensors, so FedSpeed's perturbation norm must be global) with f(x) = 1/2 x^T A x - b^T x."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.first = nn.Parameter(torch.zeros(2))
        self.second = nn.Parameter(torch.zeros(3))
        self.register_buffer("a", torch.tensor(a, dtype=torch.float32))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float32))

    def forward(self) -> Tensor:
        x = torch.cat([self.first, self.second])
        return 0.5 * x @ self.a @ x - self.b @ x


def quadratic_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    return model()  # the data do not enter: the rule's formulas are what is checked


def quadratic_problem(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((5, 5))
    a = m @ m.T / 5 + np.eye(5)  # symmetric positive definite: grad f = A x - b
    return a, rng.standard_normal(5), rng.standard_normal(5)  # A, b, x_t


def f_and_grad(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    return float(0.5 * x @ a @ x - b @ x), a @ x - b


DUMMY_X, DUMMY_Y = torch.zeros(4, 1), torch.zeros(4, 1)


def test_registry_holds_the_three_rules_with_papers() -> None:
    assert CLIENT_RULES.names() == ["sgd", "fedprox", "fedspeed"]
    for entry in CLIENT_RULES:
        assert entry.summary and entry.meta["paper"]


def test_one_sgd_step_on_a_linear_model_is_lr_times_the_analytic_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = data(8, 3, 1)
    weights = sent_weights(model)
    spec = LocalSpec(rule="sgd", lr=0.1, batch_size=8)
    result = local_update(ClientJob(client=5, weights=weights, steps=1, seed=0), spec, model, mse, x, y)

    w, b = weights[:3].double(), weights[3].double()
    r = x.double() @ w + b - y.double()[:, 0]  # residuals at x_t
    grad = torch.cat([2 / 8 * r @ x.double(), (2 / 8 * r.sum()).reshape(1)])  # d/dw, d/db of mean r^2
    assert result.delta.dtype == torch.float32 and result.delta.device.type == "cpu"
    torch.testing.assert_close(result.delta.double(), 0.1 * grad, rtol=1e-5, atol=1e-7)
    assert result.loss == pytest.approx(float((r ** 2).mean()), rel=1e-6)
    assert (result.client, result.examples, result.rule_state) == (5, 8, None)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "weight_decay": 0.01}])
def test_q_sgd_steps_equal_a_hand_loop_with_torch_sgd(options: dict) -> None:
    n, batch, steps, seed, lr = 10, 3, 7, 1234, 0.05  # 3 batches an epoch, 1 row skipped, 7 steps: 3 epochs
    x, y = data(n)
    model = mlp()
    weights = sent_weights(model)
    spec = LocalSpec(rule="sgd", lr=lr, batch_size=batch, optimizer_options=options)
    result = local_update(ClientJob(client=0, weights=weights, steps=steps, seed=seed), spec, model, mse, x, y)

    ref = mlp()
    torch.nn.utils.vector_to_parameters(weights.clone(), ref.parameters())
    opt = torch.optim.SGD(ref.parameters(), lr=lr, **options)
    losses = []
    for idx in documented_batches(n, batch, steps, seed):
        assert idx is not None
        opt.zero_grad()
        loss = mse(ref, x[idx], y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if not options:  # plain SGD: p - lr g in every implementation, bit for bit (trainlab builds the fused one)
        assert torch.equal(result.delta, weights - flat_params(ref))
    else:  # fused momentum/weight decay orders the floating-point operations differently: within an ulp or so
        torch.testing.assert_close(result.delta, weights - flat_params(ref), rtol=0, atol=1e-6)
    assert result.loss == pytest.approx(float(np.mean(losses)), rel=1e-6)
    # the model holds the client's final weights x_K on return (documented)
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=0, atol=1e-6)


def test_a_client_with_fewer_rows_than_a_batch_uses_all_its_rows_every_step() -> None:
    x, y = data(3)
    model = mlp()
    weights = sent_weights(model)
    spec = LocalSpec(rule="sgd", lr=0.1, batch_size=8)
    result = local_update(ClientJob(client=0, weights=weights, steps=3, seed=9), spec, model, mse, x, y)
    ref = mlp()
    load_flat_(ref, weights)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):  # full-batch gradient descent
        opt.zero_grad()
        mse(ref, x, y).backward()
        opt.step()
    torch.testing.assert_close(result.delta, weights - flat_params(ref), rtol=0, atol=1e-6)
    assert result.examples == 3


def test_fedprox_with_mu_zero_is_sgd_bit_for_bit() -> None:
    x, y = data(10)
    model = mlp()
    job = ClientJob(client=0, weights=sent_weights(model), steps=5, seed=7)
    sgd = local_update(job, LocalSpec(rule="sgd", lr=0.05, batch_size=4), model, mse, x, y)
    prox = local_update(job, LocalSpec(rule="fedprox", lr=0.05, batch_size=4, prox_mu=0.0), model, mse, x, y)
    assert torch.equal(sgd.delta, prox.delta) and sgd.loss == prox.loss and prox.rule_state is None


def test_fedprox_on_a_quadratic_matches_the_prox_gradient_formula() -> None:
    a, b, x_t = quadratic_problem()
    lr, mu, steps = 0.1, 0.5, 4
    model = Quadratic(a, b)
    weights = torch.tensor(x_t, dtype=torch.float32)
    spec = LocalSpec(rule="fedprox", lr=lr, batch_size=2, prox_mu=mu)
    result = local_update(ClientJob(client=0, weights=weights, steps=steps, seed=0), spec, model, quadratic_loss,
                          DUMMY_X, DUMMY_Y)
    x0 = weights.double().numpy()  # the float32 weights sent, in float64
    x, losses = x0.copy(), []
    for _ in range(steps):  # x <- x - lr (grad f(x) + mu (x - x_t))   (Li et al. 2020)
        loss, grad = f_and_grad(a, b, x)
        losses.append(loss)
        x = x - lr * (grad + mu * (x - x0))
    np.testing.assert_allclose(result.delta.double().numpy(), x0 - x, rtol=1e-5, atol=1e-6)
    assert result.loss == pytest.approx(np.mean(losses), rel=1e-5)


def fedspeed_by_hand(a: np.ndarray, b: np.ndarray, x_t: np.ndarray, ghat: np.ndarray, *, lr: float, rho: float,
                     lam: float, alpha: float, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
    """FedSpeed's local phase (families.md, Sun et al. 2023) with plain SGD: (delta, new ghat, mean loss)."""
    x, losses = x_t.copy(), []
    for _ in range(steps):
        loss, g1 = f_and_grad(a, b, x)
        losses.append(loss)
        _, g2 = f_and_grad(a, b, x + rho * g1 / np.linalg.norm(g1))
        g = (1 - alpha) * g1 + alpha * g2
        x = x - lr * (g - ghat + (x - x_t) / lam)
    ghat_new = ghat - (x - x_t) / lam
    xhat = x - lam * ghat_new
    return x_t - xhat, ghat_new, float(np.mean(losses))


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("with_state", [False, True])
def test_fedspeed_on_a_quadratic_matches_the_formulas(alpha: float, with_state: bool) -> None:
    a, b, x_t = quadratic_problem()
    lr, rho, lam, steps = 0.1, 0.3, 4.0, 3
    ghat = np.random.default_rng(4).standard_normal(5) * 0.2 if with_state else np.zeros(5)
    model = Quadratic(a, b)
    weights = torch.tensor(x_t, dtype=torch.float32)
    state = torch.tensor(ghat, dtype=torch.float32) if with_state else None
    spec = LocalSpec(rule="fedspeed", lr=lr, batch_size=2, fedspeed_rho=rho, fedspeed_lambda=lam,
                     fedspeed_alpha=alpha)
    result = local_update(ClientJob(client=2, weights=weights, steps=steps, seed=0, rule_state=state), spec, model,
                          quadratic_loss, DUMMY_X, DUMMY_Y)
    x0 = weights.double().numpy()
    g0 = state.double().numpy() if state is not None else ghat
    delta, ghat_new, loss = fedspeed_by_hand(a, b, x0, g0, lr=lr, rho=rho, lam=lam, alpha=alpha, steps=steps)
    np.testing.assert_allclose(result.delta.double().numpy(), delta, rtol=1e-5, atol=1e-5)
    assert result.rule_state is not None and result.rule_state.dtype == torch.float32
    np.testing.assert_allclose(result.rule_state.double().numpy(), ghat_new, rtol=1e-5, atol=1e-6)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    # the model holds x_K (not xhat): x_K = x_t + lambda (ghat_old - ghat_new)
    x_k = x0 + lam * (g0 - ghat_new)
    np.testing.assert_allclose(flat_params(model).double().numpy(), x_k, rtol=1e-5, atol=1e-5)


def test_fedspeed_perturbation_is_not_the_unperturbed_gradient() -> None:
    """Guards the test above: with rho > 0 the perturbed gradient changes the result (so alpha is exercised)."""
    a, b, x_t = quadratic_problem()
    weights = torch.tensor(x_t, dtype=torch.float32)
    job = ClientJob(client=0, weights=weights, steps=3, seed=0)
    out = [local_update(job, LocalSpec(rule="fedspeed", lr=0.1, batch_size=1, fedspeed_rho=rho), Quadratic(a, b),
                        quadratic_loss, DUMMY_X, DUMMY_Y).delta for rho in (0.0, 0.3)]
    assert not torch.allclose(out[0], out[1])


def test_same_job_same_delta_bit_for_bit_and_another_seed_other_batches() -> None:
    x, y = data(12)
    model = mlp()
    spec = LocalSpec(rule="fedspeed", lr=0.05, batch_size=4)
    job = ClientJob(client=1, weights=sent_weights(model), steps=6, seed=11)
    rng_before = torch.get_rng_state()
    first = local_update(job, spec, model, mse, x, y)
    second = local_update(job, spec, mlp(), mse, x, y)  # another model object, other initial weights
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is never drawn from
    assert torch.equal(first.delta, second.delta) and torch.equal(first.rule_state, second.rule_state)
    assert first.loss == second.loss
    other = local_update(ClientJob(client=1, weights=job.weights, steps=6, seed=12), spec, model, mse, x, y)
    assert not torch.equal(first.delta, other.delta)
    assert not all(torch.equal(i, j) for i, j in zip(documented_batches(12, 4, 6, 11), documented_batches(12, 4, 6, 12))
                   if i is not None and j is not None)


def test_job_weights_are_never_written_and_the_result_does_not_alias_the_model() -> None:
    x, y = data(10)
    model = mlp()
    weights = sent_weights(model)
    state = torch.full_like(weights, 0.01)
    kept_w, kept_s = weights.clone(), state.clone()
    result = local_update(ClientJob(client=0, weights=weights, steps=3, seed=0, rule_state=state),
                          LocalSpec(rule="fedspeed", lr=0.1, batch_size=3), model, mse, x, y)
    assert torch.equal(weights, kept_w) and torch.equal(state, kept_s)
    delta = result.delta.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(result.delta, delta)
    assert result.delta.data_ptr() not in {p.data_ptr() for p in model.parameters()}
    assert all(p.grad is None for p in model.parameters())


def test_buffers_and_mode_are_the_servers_after_the_update() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    x, y = data(10)
    seen = []

    def loss_fn(m: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        seen.append(m.training)
        return mse(m, xb, yb)

    local_update(ClientJob(client=0, weights=flat_params(model).clone(), steps=3, seed=0),
                 LocalSpec(rule="sgd", lr=0.1, batch_size=4), model, loss_fn, x, y)
    assert seen == [True, True, True] and not model.training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_spec_and_job_pickle_for_ray_tasks() -> None:
    spec = LocalSpec(rule="fedprox", lr=0.1, batch_size=4, prox_mu=0.1, optimizer_options={"momentum": 0.5})
    assert spec.optimizer_options == (("momentum", 0.5),) and hash(spec) == hash(pickle.loads(pickle.dumps(spec)))
    job = ClientJob(client=0, weights=torch.zeros(3), steps=1, seed=0)
    assert torch.equal(pickle.loads(pickle.dumps(job)).weights, job.weights)
    result = ClientResult(client=0, delta=torch.ones(3), rule_state=None, loss=1.0, examples=3)
    assert torch.equal(pickle.loads(pickle.dumps(result)).delta, result.delta)


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "scaffold"}, "unknown client rule 'scaffold'; allowed: sgd, fedprox, fedspeed"),
    ({"lr": 0.0}, "lr: must be a finite number > 0"),
    ({"lr": float("nan")}, "lr: must be a finite number > 0"),
    ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
    ({"prox_mu": 0.1}, "prox_mu: is FedProx's coefficient, but rule is 'sgd'"),
    ({"rule": "fedprox", "prox_mu": -1.0}, "prox_mu: must be a finite number >= 0"),
    ({"rule": "fedspeed", "fedspeed_lambda": 0.0}, "fedspeed_lambda: must be a finite number > 0"),
    ({"rule": "fedspeed", "fedspeed_rho": -0.1}, "fedspeed_rho: must be a finite number >= 0"),
    ({"rule": "fedspeed", "fedspeed_alpha": 1.5}, "fedspeed_alpha: must be in [0, 1]"),
    ({"optimizer": "no-such-optimizer"}, "optimizer: unknown optimizer 'no-such-optimizer'"),
    ({"optimizer_options": {"momentum": -1.0}}, "optimizer.momentum"),
    ({"optimizer_options": {"lr": 1.0}}, "optimizer_options: lr is set by the spec"),
])
def test_a_bad_spec_is_a_one_line_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        LocalSpec(**{"rule": "sgd", "lr": 0.1, "batch_size": 4, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("job, message", [
    ({"weights": torch.zeros(3)}, "job.weights must be a flat float vector of the model's 32 parameters"),
    ({"steps": 0}, "job.steps must be an integer >= 1"),
    ({"seed": -1}, "job.seed must be an integer in [0, 2**64)"),
    ({"rule_state": torch.zeros(32)}, "rule 'sgd' keeps no per-client state"),
])
def test_a_job_that_does_not_fit_is_a_one_line_value_error(job: dict, message: str) -> None:
    model = mlp()
    fields = {"client": 0, "weights": flat_params(model), "steps": 1, "seed": 0, **job}
    x, y = data(4)
    with pytest.raises(ValueError) as err:
        local_update(ClientJob(**fields), LocalSpec(rule="sgd", lr=0.1, batch_size=2), model, mse, x, y)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fedspeed_state_of_the_wrong_size_and_mismatched_data_are_refused() -> None:
    model = mlp()
    x, y = data(4)
    spec = LocalSpec(rule="fedspeed", lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="job.rule_state must be a flat vector"):
        local_update(ClientJob(client=0, weights=flat_params(model), steps=1, seed=0, rule_state=torch.zeros(5)),
                     spec, model, mse, x, y)
    with pytest.raises(ValueError, match="at least one row and as many targets"):
        local_update(ClientJob(client=0, weights=flat_params(model), steps=1, seed=0), spec, copy.deepcopy(model),
                     mse, x, y[:3])
