"""Certified (IBP) training (trainlab.robust.certified) and the ``certified`` probe.

The schedules are checked at hand-computed steps and against the defining properties of auto_LiRPA's
SmoothedScheduler (a β = 4 power up to the mid point, whose slope there equals the line's on to (W, ε)); the
regularisers on hand-made bounds with closed-form values; the loss against the cross-entropy of clean logits
and of worst-case logits computed separately; the probe against the exact robust accuracy of a linear model.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab
from trainlab.config import ConfigError
from trainlab.losses.objective import Objective
from trainlab.models import build
from trainlab.models.cnn import ConvNet
from trainlab.models.mlp import MLP
from trainlab.models.parametrization import OutputScaled
from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext
from trainlab.robust.certified import (
    REG_EPS,
    TAU,
    CertifiedLoss,
    epsilon_at,
    kappa_at,
    relu_balance_loss,
    tightness_loss,
)
from trainlab.robust.ibp import propagate, verified_error
from trainlab.train.config import LossOptions, ProbeOptions
from trainlab.workloads.base import DataSpec

# ------------------------------------------------------------------------------------------------ schedules


def test_linear_ramp_at_hand_picked_steps():
    eps, start, warmup = 0.4, 10, 20
    values = {s: epsilon_at(s, eps, start, warmup, "linear") for s in (0, 9, 10, 15, 20, 29, 30, 31, 1000)}
    assert values[0] == values[9] == values[10] == 0.0
    assert values[15] == pytest.approx(0.1) and values[20] == pytest.approx(0.2) and values[29] == pytest.approx(0.38)
    assert values[30] == values[31] == values[1000] == eps  # exactly eps from start + warmup on


def test_smoothed_ramp_matches_auto_lirpa_closed_form():
    # eps = 1, W = 100 steps after start = 10: mid point m = 25, beta = 4, alpha = 1 / (25^3 (75*4 + 25))
    eps, start, warmup = 1.0, 10, 100
    alpha = Fraction(1, 25**3 * (75 * 4 + 25))
    at = {p: epsilon_at(start + p, eps, start, warmup) for p in range(-10, warmup + 5)}
    assert all(at[p] == 0.0 for p in range(-10, 1))
    assert at[1] == pytest.approx(float(alpha), rel=1e-12)
    assert at[10] == pytest.approx(float(alpha * 10**4), rel=1e-12)
    assert at[25] == pytest.approx(1 / 13, rel=1e-12)  # alpha·25^4 = 25/325
    assert at[50] == pytest.approx(5 / 13, rel=1e-12)  # 1/13 + (12/13)·25/75
    assert at[99] == pytest.approx(1 / 13 + (12 / 13) * 74 / 75, rel=1e-12)
    assert at[100] == at[104] == eps and at[99] < eps
    # a power of 4 before the mid point, a straight line after it, and the same slope where they meet
    assert all(at[p] == pytest.approx(at[1] * p**4, rel=1e-9) for p in range(1, 26))
    assert all(at[p + 1] - at[p] == pytest.approx(at[26] - at[25], rel=1e-9) for p in range(25, 99))
    assert 4 * at[1] * 25**3 == pytest.approx(at[26] - at[25], rel=1e-9)
    values = [at[p] for p in sorted(at)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert at[50] < 0.5 * eps  # slower than the linear ramp early on


@pytest.mark.parametrize("ramp", ["smoothed", "linear"])
def test_ramp_edge_cases(ramp):
    assert epsilon_at(4, 0.3, 5, 0, ramp) == 0.0 and epsilon_at(5, 0.3, 5, 0, ramp) == 0.3  # no warm-up
    # fewer than 4 steps: the smoothed ramp's mid point is 0 and it is the line
    assert epsilon_at(1, 0.3, 0, 3, ramp) == pytest.approx(0.1)
    assert epsilon_at(3, 0.3, 0, 3, ramp) == 0.3
    for warmup in (1, 4, 7, 50):
        values = [epsilon_at(s, 0.3, 2, warmup, ramp) for s in range(2 + warmup + 3)]
        assert all(b >= a for a, b in zip(values, values[1:]))
        assert values[2] == 0.0 and values[2 + warmup] == 0.3 and values[1 + warmup] < 0.3
    with pytest.raises(ValueError, match="ramp"):
        epsilon_at(0, 0.3, 0, 3, "cosine")  # type: ignore[arg-type]


def test_kappa_ramps_with_eps():
    assert kappa_at(0.0, 0.2, 0.5) == 1.0
    assert kappa_at(0.1, 0.2, 0.5) == pytest.approx(0.75)
    assert kappa_at(0.2, 0.2, 0.5) == 0.5 and kappa_at(0.2, 0.2, 0.0) == 0.0
    assert kappa_at(0.05, 0.2, 0.0) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ regularisers


def bounds(lower, upper):
    return torch.tensor([lower], dtype=torch.float64), torch.tensor([upper], dtype=torch.float64)


# layer 1: centres 2, -10, 0, 2 (radii 1, 1, 1, 0); layer 2: every unit unstable (radii 2, 2)
LAYER1 = bounds([1.0, -11.0, -1.0, 2.0], [3.0, -9.0, 1.0, 2.0])
LAYER2 = bounds([-3.0, -1.0], [1.0, 3.0])
R0 = torch.tensor(0.5, dtype=torch.float64)


def test_tightness_on_hand_made_bounds():
    # r0/r1 = 0.5/0.75 ≥ τ: no penalty; r0/r2 = 0.25: (0.5 − 0.25)/0.5 = 0.5; mean over the two layers
    assert TAU == 0.5
    assert float(tightness_loss([LAYER1, LAYER2], R0)) == pytest.approx(0.25)
    assert float(tightness_loss([LAYER1], R0)) == 0.0
    assert float(tightness_loss([bounds([1.0], [1.0])], R0)) == 0.0  # a zero radius: the reference's clamp
    assert float(tightness_loss([], R0)) == 0.0


def test_relu_balance_on_hand_made_bounds():
    # layer 1: active centres 2, 2 against inactive -10: ρ_μ = 4/10, penalty (0.5 − 0.4)/0.5 = 0.2;
    # c̄ = -1.5, squared deviations 12.25, 72.25, 2.25, 12.25: ρ_v = 24.5/72.25 = 98/289, penalty 93/289
    layer1 = 0.2 + 93 / 289
    assert float(relu_balance_loss([LAYER1])) == pytest.approx(layer1, rel=1e-12)
    # layer 2 has neither stably active nor stably inactive units: no term; still one of the two layers
    assert float(relu_balance_loss([LAYER1, LAYER2])) == pytest.approx(layer1 / 2, rel=1e-12)
    # min(ρ, 1/ρ): mirroring the layer (active <-> inactive) gives the same penalty
    lower, upper = LAYER1
    assert float(relu_balance_loss([(-upper, -lower)])) == pytest.approx(layer1, rel=1e-12)
    # only active units: both ratios are 0, the largest penalty 1 each
    assert float(relu_balance_loss([bounds([1.0, 2.0], [2.0, 3.0])])) == pytest.approx(2.0)
    # balanced enough (ρ ≥ τ): no penalty
    assert float(relu_balance_loss([bounds([1.0, -3.0], [3.0, -1.0])])) == 0.0
    assert float(relu_balance_loss([])) == 0.0


def test_relu_balance_gradient_pushes_towards_balance():
    lower, upper = (t.clone().requires_grad_() for t in LAYER1)
    relu_balance_loss([(lower, upper)]).backward()
    # raising the active centres (too small against the inactive one) lowers the penalty
    assert float(lower.grad[0, 0] + upper.grad[0, 0]) < 0


# ------------------------------------------------------------------------------------------------ the loss


def small_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(10, 4, depth=2, width=16, batchnorm=True).train()


def batch(seed: int = 1, n: int = 12, shape=(10,)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 4, (n,), generator=g)


class RefuseNet(nn.Module):
    """A ``net`` that must not run: the bounds go through the model given at build."""

    def forward(self, x):
        raise AssertionError("the bounds must go through the model given at build, not net")


refuse_net = RefuseNet()


def test_loss_before_the_ramp_is_the_clean_cross_entropy():
    model = small_mlp()
    x, y = batch()
    expected = F.cross_entropy(model(x), y, reduction="none")
    losses, penalty = CertifiedLoss(model, 0.1, start=5, warmup=10, reg=0.0)(model, x, y, 3)
    assert penalty is None
    torch.testing.assert_close(losses, expected)
    # with the regularisers the clean loss is unchanged; the penalty reads bounds at the tiny radius REG_EPS
    losses, penalty = CertifiedLoss(model, 0.1, start=5, warmup=10, reg=0.5)(refuse_net, x, y, 3)
    torch.testing.assert_close(losses, expected)
    assert REG_EPS == 1e-6  # the reference code's --min-eps-reg
    prop = propagate(model, x, REG_EPS)
    assert prop.input_radius == pytest.approx(REG_EPS)
    separate = 0.5 * (tightness_loss(prop.preactivations, prop.input_radius) + relu_balance_loss(prop.preactivations))
    assert penalty is not None and float(penalty.detach()) == pytest.approx(float(separate.detach()), rel=1e-5)


def test_loss_at_full_eps_is_the_cross_entropy_of_worst_case_logits():
    model = small_mlp()
    x, y = batch()
    loss = CertifiedLoss(model, 0.1, kappa=0.0)
    assert loss.epsilon(0) == 0.1  # no start, no warm-up
    losses, penalty = loss(refuse_net, x, y, 0)
    assert penalty is None  # the warm-up is over: no regularisers
    margins = propagate(model, x, 0.1).margin_lower(y)
    torch.testing.assert_close(losses, torch.logsumexp(-margins, dim=1))  # m_y = 0: CE(−m, y) = log Σ exp(−m_j)
    # worst-case logits −m_j ≥ z_j − z_y, so the robust loss bounds the clean one from above
    assert bool((losses >= F.cross_entropy(model(x), y, reduction="none") - 1e-6).all())


def test_loss_mid_ramp_mixes_with_kappa_and_weights_the_regularisers():
    model = small_mlp()
    x, y = batch()
    loss = CertifiedLoss(model, 0.2, start=0, warmup=10, ramp="linear", kappa=0.5, reg=0.5)
    losses, penalty = loss(refuse_net, x, y, 5)  # eps_t = 0.1, kappa_t = 0.75, weight 0.5·(1 − 0.5)
    prop = propagate(model, x, 0.1)
    clean = F.cross_entropy(prop.logits, y, reduction="none")
    robust = torch.logsumexp(-prop.margin_lower(y), dim=1)
    torch.testing.assert_close(losses, 0.75 * clean + 0.25 * robust)
    regs = tightness_loss(prop.preactivations, prop.input_radius) + relu_balance_loss(prop.preactivations)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(0.25 * float(regs.detach()), rel=1e-5)
    assert loss.reg_weight(10) == 0.0 and loss.reg_weight(0) == 0.5


@pytest.mark.parametrize("kind", ["mlp", "cnn1d", "cnn2d"])
def test_gradients_are_finite_through_the_warm_up(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model: nn.Module = MLP(10, 4, depth=2, width=16, batchnorm=True)
        x, y = batch()
    elif kind == "cnn1d":
        model = ConvNet(1, 1, 4, [4, 4], 3, batchnorm=True)
        x, y = batch(shape=(12,))
    else:
        model = ConvNet(2, 2, 4, [3, 4], 3)
        x, y = batch(shape=(2, 6, 6))
    loss = CertifiedLoss(model, 0.1, start=2, warmup=8, kappa=0.5)
    for step in (0, 5, 10):  # before the ramp (regularisers only), mid-ramp, at full eps
        model.zero_grad()
        losses, penalty = loss(model, x, y, step)
        assert losses.shape == (len(x),) and bool(torch.isfinite(losses).all())
        total = losses.mean() + (penalty if penalty is not None else 0)
        total.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


# ------------------------------------------------------------------------------------------------ refusals


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def certified_options(**kwargs) -> LossOptions:
    return LossOptions(certified="ibp", certified_eps=0.1, **kwargs)


def test_models_ibp_cannot_bound_are_refused_at_build():
    transformer = build("transformer", DataSpec("tokens", (3,), 5, "classification", vocab_size=6),
                        n_layer=1, n_head=2, d_model=8)
    with pytest.raises(ConfigError) as err:
        CertifiedLoss.from_options(certified_options(), transformer)
    assert err.value.key == "loss.certified" and "Transformer" in one_line(err)
    with pytest.raises(ConfigError) as err:
        CertifiedLoss.from_options(certified_options(), OutputScaled(MLP(4, 3), 2.0))
    assert err.value.key == "loss.certified" and "param.output_scale" in one_line(err)
    with pytest.raises(ConfigError) as err:
        CertifiedLoss.from_options(certified_options(), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    assert "LayerNorm" in one_line(err)
    built = CertifiedLoss.from_options(certified_options(certified_warmup=7, certified_kappa=0.5), MLP(4, 3))
    assert (built.eps, built.warmup, built.kappa, built.ramp, built.reg) == (0.1, 7, 0.5, "smoothed", 0.5)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError) as err:
        CertifiedLoss(MLP(4, 3), 0.0)
    assert "eps" in one_line(err)
    with pytest.raises(ValueError) as err:
        CertifiedLoss(MLP(4, 3), 0.1)(refuse_net, torch.randn(2, 4), torch.rand(2), 0)
    assert "class index" in one_line(err)


def test_several_processes_are_refused():
    workload = SimpleNamespace(name="mnist1d")
    with pytest.raises(ConfigError) as err:
        Objective(certified_options(), workload, MLP(4, 3), n_train=10, n_classes=3, distributed=True)
    assert err.value.key == "loss.certified" and "several processes" in one_line(err)
    torch.manual_seed(0)
    model = MLP(4, 3)
    objective = Objective(certified_options(), workload, model, n_train=10, n_classes=3)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    losses, penalty = objective(model, x, y, torch.arange(5), 0)  # one process: the certified loss at full eps
    expected = torch.logsumexp(-propagate(model, x, 0.1).margin_lower(y), dim=1)
    assert penalty is None
    torch.testing.assert_close(losses, expected)


@pytest.mark.parametrize("overrides, says", [
    (["model=transformer", "model.d_model=16", "model.n_head=2", "model.n_layer=1"], "Transformer"),
    (["workload=teacher_student"], "regression"),
    (["workload=mnist1d", "workload.num_samples=1000", "loss.adversarial=pgd", "loss.adversarial_eps=0.1"],
     "loss.adversarial"),
    (["workload=mnist1d", "workload.num_samples=1000", "param.output_scale=2"], "output_scale"),
    (["workload=mnist1d", "workload.num_samples=1000", "model.batchnorm=true", "model.dropout=0.1"], "Dropout"),
    (["workload=mnist1d", "workload.num_samples=1000", "model.batchnorm=true", "model.ghost_batch=16"],
     "GhostBatchNorm1d"),
])
def test_trainer_refuses_in_one_line(tmp_path, overrides, says):
    with pytest.raises(ConfigError) as err:
        trainlab.run(None, [*overrides, "loss.certified=ibp", "loss.certified_eps=0.1", "steps=2"],
                     out=tmp_path / "run", quiet=True, report=False)
    assert err.value.key == "loss.certified" and says in one_line(err)


@pytest.mark.parametrize("overrides, key", [
    (["loss.certified=ibp", "loss.certified_eps=0.1", "loss.certified_start=5", "loss.certified_warmup=20"],
     "loss.certified_warmup"),
    (["loss.adversarial=pgd", "loss.adversarial_eps=0.1", "loss.adversarial_warmup=21"], "loss.adversarial_warmup"),
])
def test_a_radius_ramp_longer_than_the_run_is_refused(overrides, key):
    from trainlab.train.config import from_cli

    with pytest.raises(ConfigError) as err:
        from_cli(None, ["workload=mnist1d", "steps=20", *overrides])
    assert err.value.key == key and "never reach" in one_line(err)
    # ending exactly at the last step is allowed
    fitting = [o.replace("=20", "=15").replace("=21", "=20") for o in overrides]
    from_cli(None, ["workload=mnist1d", "steps=20", *fitting])


def test_a_sequence_that_masks_the_head_is_refused(tmp_path):
    """Task-incremental training masks the logits to the task's classes; the bounds would be of the whole head."""
    with pytest.raises(ConfigError) as err:
        trainlab.run(None, ["workload=split_mnist1d", "workload.scenario=task", "loss.certified=ibp",
                            "loss.certified_eps=0.1"], out=tmp_path / "run", quiet=True, report=False)
    assert err.value.key == "loss.certified" and "masked" in one_line(err)


# ------------------------------------------------------------------------------------------------ the probe


def probe_context(model, x, y, eps=(0.05, 0.3)) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"),
                        x_train=x, y_train=y, x_val=x, y_val=y, step=0, lr=0.1,
                        options=ProbeOptions(robust_eps=eps))


def test_probe_on_a_linear_model_is_the_exact_robust_accuracy():
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    values = PROBES.get("certified").factory(probe_context(nn.Sequential(linear), x, y))
    w, b = linear.weight.detach(), linear.bias.detach()
    for eps in (0.05, 0.3):
        # z_y − z_j at the worst corner: (W_y − W_j)·x + b_y − b_j − ε·‖W_y − W_j‖₁ > 0 for every j ≠ y
        diff = w[y][:, None, :] - w[None]
        worst = (diff * x[:, None, :]).sum(-1) + (b[y][:, None] - b[None]) - eps * diff.abs().sum(-1)
        robust = (worst.scatter(1, y[:, None], math.inf) > 0).all(1).double().mean()
        assert values[f"verified_acc_eps{eps:g}"] == pytest.approx(float(robust), abs=1e-9)
    assert 0 < values["verified_acc_eps0.3"] < values["verified_acc_eps0.05"]  # not vacuous at these radii


def test_probe_reads_eval_mode_and_matches_verified_error():
    model = small_mlp()
    x, y = batch(n=64)
    model.train()
    values = PROBES.get("certified").factory(probe_context(model, x, y, eps=(0.01, 0.1)))
    assert model.training
    model.eval()
    for eps in (0.01, 0.1):
        assert values[f"verified_acc_eps{eps:g}"] == pytest.approx(1 - verified_error(model, x, y, eps))


def test_probe_not_applicable():
    probe = PROBES.get("certified").factory
    x, y = batch()
    for ctx, says in [
        (probe_context(MLP(10, 4), torch.zeros(12, 10, dtype=torch.long), y), "tokens"),
        (probe_context(MLP(10, 4), x, torch.rand(12)), "class"),
        (probe_context(OutputScaled(MLP(10, 4), 2.0), x, y), "OutputScaled"),
    ]:
        with pytest.raises(NotApplicable, match=says):
            probe(ctx)


# ------------------------------------------------------------------------------------------------ end to end


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_certified_training_lowers_the_verified_error(tmp_path):
    base = ["workload=mnist1d", "workload.num_samples=1000", "model=mlp", "model.batchnorm=true", "param.init=ibp",
            "steps=40", "eval_every=20", "seed=0", "probes=certified,robustness", "probes.robust_eps=0.05,0.1"]
    certified = trainlab.run(None, [*base, "loss.certified=ibp", "loss.certified_eps=0.1",
                                    "loss.certified_warmup=20"], out=tmp_path / "certified", quiet=True, report=False)
    plain = trainlab.run(None, base, out=tmp_path / "plain", quiet=True, report=False)
    trace = [json.loads(line) for line in (certified / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 40 and all(math.isfinite(r["loss"]) for r in trace)
    summary = json.loads((certified / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["probes"]["skipped"] == {}
    for row in rows(certified) + rows(plain):
        for eps in ("0.05", "0.1"):  # verified ⇒ robust ⇒ the attack fails: sound per example, so in the mean
            assert row[f"certified/verified_acc_eps{eps}"] <= row[f"robustness/adv_acc_eps{eps}"] + 1e-6
    cert_last, plain_last = rows(certified)[-1], rows(plain)[-1]
    # at this size plain training certifies nothing at the training radius; IBP training certifies some
    assert cert_last["certified/verified_acc_eps0.1"] > plain_last["certified/verified_acc_eps0.1"]
    assert cert_last["certified/verified_acc_eps0.1"] >= 0.02
