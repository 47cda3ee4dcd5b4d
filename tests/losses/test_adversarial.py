"""Adversarial training (trainlab.losses.adversarial): the ε warm-up, the loss against closed forms and direct
computations, its wiring into the objective (refusals, the Z-loss), the config's one-line errors, and a tiny
adversarially trained run that is more robust than its plainly trained twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab
from trainlab.config import ConfigError
from trainlab.losses import adversarial as adversarial_module
from trainlab.losses.adversarial import DEFAULT_MIX, AdversarialLoss, epsilon_at
from trainlab.losses.objective import Objective
from trainlab.robust.attacks import default_alpha, fgsm, pgd
from trainlab.train.config import LossOptions

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def ce(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, y, reduction="none")


def batch(n: int = 16, d: int = 6, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def mlp(d: int = 6, classes: int = 4, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes)).double()


def adv(attack: str = "pgd", *, eps: float = 0.2, alpha: float | None = None, steps: int = 3, mix: float = 1.0,
        warmup: int = 0, norm: str = "linf") -> AdversarialLoss:
    return AdversarialLoss(attack, eps, alpha, steps, norm, mix, warmup, ce, ce)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ ε schedule


def test_epsilon_ramps_linearly_over_the_warmup_then_stays() -> None:
    assert [epsilon_at(t, 0.2, 0) for t in (0, 1, 100)] == [0.2, 0.2, 0.2]  # no warm-up: ε from the first step
    assert [epsilon_at(t, 0.2, 4) for t in (0, 1, 2, 3, 4, 5, 1000)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2], rel=1e-15)
    assert epsilon_at(0, 0.2, 4) == 0.0  # exactly 0: the first step is plain training


def test_default_mix_is_goodfellow_for_fgsm_and_madry_for_pgd() -> None:
    for attack, mix in (("fgsm", 0.5), ("pgd", 1.0)):
        loss = AdversarialLoss.from_options(LossOptions(adversarial=attack, adversarial_eps=0.1), attack_loss=ce,  # type: ignore[arg-type]
                                            train_loss=ce)
        assert loss.mix == mix == DEFAULT_MIX[attack]
    given = AdversarialLoss.from_options(LossOptions(adversarial="pgd", adversarial_eps=0.1, adversarial_mix=0.25),
                                         attack_loss=ce, train_loss=ce)
    assert given.mix == 0.25


# ------------------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("case", ["eps_zero_in_warmup", "mix_zero"])
def test_no_attack_is_plain_training_bit_for_bit(case: str) -> None:
    """ε_t = 0 (step 0 of a warm-up) or m = 0: the clean loss exactly, and no random start drawn (the global RNG
    is where it was, so a run's later draws are those of plain training)."""
    net, (x, y) = mlp(), batch()
    loss = adv(warmup=10) if case == "eps_zero_in_warmup" else adv(mix=0.0)
    before = torch.get_rng_state()
    got = loss(net, x, y, 0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(got, ce(net(x), y))
    assert not torch.equal(adv(warmup=10)(net, x, y, 5), ce(net(x), y))  # the check can fail: at ε_t > 0 it differs


def test_fgsm_on_a_linear_model_is_the_closed_form() -> None:
    """f(x) = Wx + b, L = CE: ∇_x L = Wᵀ(softmax(f(x)) − e_y), so x' = x + ε·sign(Wᵀ(p − e_y)) and
    L(x') = logsumexp(Wx' + b) − (Wx' + b)_y -- computed here in numpy, apart from torch and autograd."""
    x, y = batch(n=32, d=5, classes=3, seed=3)
    torch.manual_seed(4)
    net = nn.Linear(5, 3).double()
    eps = 0.3
    got = adv("fgsm", eps=eps, mix=1.0)(net, x, y, 7)

    w, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    xs, ys = x.numpy(), y.numpy()
    z = xs @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[ys]
    x_adv = xs + eps * np.sign((p - onehot) @ w)
    z_adv = x_adv @ w.T + b
    zmax = z_adv.max(1, keepdims=True)
    expected = (zmax[:, 0] + np.log(np.exp(z_adv - zmax).sum(1))) - z_adv[np.arange(len(ys)), ys]
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=0)
    clean = ce(net(x), y).detach().numpy()
    # a linear model's loss grows along the sign of its gradient: the attack raised every example's loss
    assert np.all(expected > clean)


@pytest.mark.parametrize("mix", [0.25, 0.5, 0.9])
def test_mix_is_the_convex_combination_with_the_same_attack(mix: float) -> None:
    """(1 − m)·L(x) + m·L(x'), x' = PGD from the random start the same global RNG state draws."""
    net, (x, y) = mlp(), batch()
    eps, steps = 0.2, 3
    torch.manual_seed(11)
    got = adv(eps=eps, steps=steps, mix=mix)(net, x, y, 3)
    torch.manual_seed(11)
    x_adv = pgd(net, x, y, eps, default_alpha(eps, steps), steps, loss_fn=ce)
    clean, attacked = ce(net(x), y), ce(net(x_adv), y)
    assert torch.equal(got, (1 - mix) * clean + mix * attacked)
    assert not torch.allclose(clean, attacked)  # the two terms differ, so the weights are tested
    torch.manual_seed(12)  # another start: another loss (the random start really comes from the global RNG)
    assert not torch.equal(adv(eps=eps, steps=steps, mix=mix)(net, x, y, 3), got)


def test_fgsm_mix_is_the_convex_combination() -> None:
    net, (x, y) = mlp(), batch()
    got = adv("fgsm", eps=0.1, mix=0.5)(net, x, y, 0)
    expected = 0.5 * ce(net(x), y) + 0.5 * ce(net(fgsm(net, x, y, 0.1, loss_fn=ce)), y)
    assert torch.equal(got, expected)


def test_pgd_step_size_scales_with_the_eps_ramp(monkeypatch: pytest.MonkeyPatch) -> None:
    """α_t = α·ε_t/ε (given α), 2.5·ε_t/steps (default): the calls pgd receives over a warm-up of 10 steps."""
    calls: list[tuple[float, float, int, str]] = []

    def recording_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                      **kwargs: Any) -> torch.Tensor:
        calls.append((eps, alpha, steps, kwargs["norm"]))
        return x

    monkeypatch.setattr(adversarial_module, "pgd", recording_pgd)
    net, (x, y) = mlp(), batch()
    given = adv(eps=0.2, alpha=0.04, steps=5, warmup=10, norm="l2")
    default = adv(eps=0.2, steps=5, warmup=10)
    for step in (2, 5, 10, 30):
        given(net, x, y, step)
        default(net, x, y, step)
    expected = []
    for eps_t in (0.04, 0.1, 0.2, 0.2):
        expected += [(eps_t, 0.04 * eps_t / 0.2, 5, "l2"), (eps_t, 2.5 * eps_t / 5, 5, "linf")]
    assert [c[2:] for c in calls] == [c[2:] for c in expected]
    np.testing.assert_allclose([c[:2] for c in calls], [c[:2] for c in expected], rtol=1e-12)


def test_pgd_during_the_warmup_is_the_direct_computation() -> None:
    """One L∞ step at step 5 of a 10-step warm-up (ε = 0.2 → ε_t = 0.1, α = 0.04 → α_t = 0.02), written out:
    δ0 ~ U(−ε_t, ε_t) from the global RNG, then x' = x + clamp(δ0 + α_t·sign ∇L(x + δ0), −ε_t, ε_t)."""
    net, (x, y) = mlp(), batch()
    loss = adv(eps=0.2, alpha=0.04, steps=1, warmup=10)
    torch.manual_seed(5)
    got = loss.perturb(net, x, y, epsilon_at(5, 0.2, 10))
    torch.manual_seed(5)
    delta0 = torch.empty_like(x).uniform_(-0.1, 0.1)
    start = (x + delta0).requires_grad_(True)
    (g,) = torch.autograd.grad(ce(net(start), y).sum(), start)
    expected = x + (delta0 + 0.02 * g.sign()).clamp(-0.1, 0.1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    assert float((got - x).abs().max()) <= 0.1 + 1e-15
    # had α not followed the ramp (0.04 at ε_t = 0.1), the iterate would differ
    assert not torch.allclose(got, x + (delta0 + 0.04 * g.sign()).clamp(-0.1, 0.1))


def test_parameter_grads_untouched_until_backward_and_modes_restored() -> None:
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4)).double()
    x, y = batch()
    net.train()
    params = list(net.parameters())
    preset = {i: torch.full_like(p, 3.0) for i, p in enumerate(params) if i % 2 == 0}  # some accumulated, some None
    for i, p in enumerate(params):
        p.grad = preset[i].clone() if i in preset else None
    losses = adv(eps=0.1, steps=4, mix=0.5)(net, x, y, 1)
    for i, p in enumerate(params):
        assert p.grad is None if i not in preset else p.grad is not None and torch.equal(p.grad, preset[i]), i
    assert all(m.training for m in net.modules())  # the attack's eval mode was undone
    losses.mean().backward()
    assert all(p.grad is not None for p in params)
    assert params[0].grad is not None and not torch.equal(params[0].grad, preset[0])


# ------------------------------------------------------------------------------------------- the objective


def test_objective_trains_on_primary_plus_z_loss_at_both_points_and_attacks_the_primary() -> None:
    """loss.z_loss with fgsm (m = 0.5): 0.5·(CE + z)(x) + 0.5·(CE + z)(x'), x' = FGSM on the workload's CE alone."""
    from trainlab import workloads
    from trainlab.losses.zloss import z_loss

    workload = workloads.build("mnist1d")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(24, 40), torch.randint(0, 10, (24,))
    options = LossOptions(adversarial="fgsm", adversarial_eps=0.1, z_loss=0.05)
    objective = Objective(options, workload, net, n_train=100, n_classes=10)
    losses, penalty = objective(net, x, y, torch.arange(24), 3)
    assert penalty is None and losses.shape == (24,)
    x_adv = fgsm(net, x, y, 0.1, loss_fn=workload.loss)
    out, out_adv = net(x), net(x_adv)
    expected = 0.5 * (workload.loss(out, y) + z_loss(out.float(), 0.05)) + \
        0.5 * (workload.loss(out_adv, y) + z_loss(out_adv.float(), 0.05))
    torch.testing.assert_close(losses, expected, rtol=1e-6, atol=1e-7)
    plain, _ = Objective(replace(options, adversarial="none", adversarial_eps=None), workload, net, n_train=100,
                         n_classes=10)(net, x, y, torch.arange(24), 3)
    assert not torch.allclose(losses, plain)


@pytest.mark.parametrize("options, workload_name, words", [
    ({"adversarial": "pgd", "adversarial_eps": 0.1}, "teacher_student",
     "loss.adversarial: needs class logits; workload teacher_student is a regression"),
    ({"adversarial": "fgsm", "adversarial_eps": 0.1, "grokalign": 1e-3}, "mnist1d",
     "loss.adversarial: replaces the training loss and cannot be combined with loss.grokalign"),
    ({"adversarial": "pgd", "adversarial_eps": 0.1, "elr": 3.0}, "mnist1d",
     "loss.adversarial: replaces the training loss and cannot be combined with loss.elr"),
    ({"certified": "ibp", "certified_eps": 0.1, "z_loss": 1e-4}, "mnist1d",
     "loss.certified: replaces the training loss and cannot be combined with loss.z_loss"),
])  # fmt: skip
def test_objective_refusals(options: dict[str, Any], workload_name: str, words: str) -> None:
    from trainlab import workloads

    workload = workloads.build(workload_name)
    net = nn.Linear(40, 10)
    with pytest.raises(ConfigError) as err:
        Objective(LossOptions(**options), workload, net, n_train=100,
                  n_classes=None if workload_name == "teacher_student" else 10)
    assert str(err.value).startswith(words)
    assert "\n" not in str(err.value)


def test_objective_refuses_several_processes() -> None:
    from trainlab import workloads

    with pytest.raises(ConfigError, match="loss.adversarial: is not supported with several processes"):
        Objective(LossOptions(adversarial="pgd", adversarial_eps=0.1), workloads.build("mnist1d"), nn.Linear(40, 10),
                  n_train=100, n_classes=10, distributed=True)


# ------------------------------------------------------------------------------------------------- config


def test_validate_names_the_key() -> None:
    cases = [
        (dict(adversarial="fgsm", adversarial_eps=0.1, adversarial_steps=3), "adversarial_steps", "pgd only"),
        (dict(adversarial="fgsm", adversarial_eps=0.1, adversarial_alpha=0.01), "adversarial_alpha", "pgd only"),
        (dict(adversarial="pgd"), "adversarial_eps", "give the radius"),
        (dict(adversarial_mix=0.5), "adversarial_mix", "not to loss.adversarial=none"),
        (dict(adversarial="pgd", adversarial_eps=0.1, certified="ibp", certified_eps=0.1), "certified",
         "exclude each other"),
    ]
    for kwargs, key, words in cases:
        with pytest.raises(ConfigError) as err:
            LossOptions(**kwargs).validate()  # type: ignore[arg-type]
        assert err.value.key == key and words in err.value.message, kwargs
    LossOptions(adversarial="pgd", adversarial_eps=0.1, adversarial_steps=3, adversarial_norm="l2").validate()


@pytest.mark.parametrize("args, words", [
    (["loss.adversarial=fgsm", "loss.adversarial_eps=0.1", "loss.adversarial_steps=3"],
     "config error: loss.adversarial_steps: applies to loss.adversarial=pgd only, not to loss.adversarial=fgsm"),
    (["loss.adversarial=pgd"], "config error: loss.adversarial_eps: give the radius of loss.adversarial=pgd"),
    (["loss.adversarial=pgd", "loss.adversarial_eps=0.1", "loss.certified=ibp", "loss.certified_eps=0.1"],
     "config error: loss.certified: and loss.adversarial exclude each other"),
    (["loss.adversarial=pgd", "loss.adversarial_eps=0.1", "workload=teacher_student"],
     "config error: loss.adversarial: needs class logits; workload teacher_student is a regression"),
])  # fmt: skip
def test_cli_errors_are_one_line_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "trainlab", "run", *args, "steps=2", "--out", "r"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and words in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "r").exists()  # nothing left behind


# ------------------------------------------------------------------------------------------------ end to end

TINY = ["workload=mnist1d", "model=mlp", "model.width=64", "steps=40", "eval_every=20", "batch_size=64",
        "optimizer.lr=1e-2", "probes=robustness", "probes.robust_eps=0.1", "seed=0"]


def _last_probe_row(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "robustness/adv_acc_eps0.1" in r][-1]


@pytest.mark.slow
def test_pgd_training_run_is_more_robust_than_plain_training(tmp_path: Path) -> None:
    """40 steps of PGD training (ε = 0.1, 10 steps) against plain training with the same seed: both finish, and
    the PGD-trained MLP keeps more of the probe's validation examples under a 10-step PGD attack at ε = 0.1.
    (Held for each of seeds 0-9 when written, margins 0.04-0.09 on 256 examples; seed 0's is 0.075.)"""
    plain = trainlab.run(overrides=TINY, out=tmp_path / "plain", quiet=True, report=False)
    robust = trainlab.run(overrides=[*TINY, "loss.adversarial=pgd", "loss.adversarial_eps=0.1"],
                          out=tmp_path / "pgd", quiet=True, report=False)
    for run_dir in (plain, robust):
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    p, r = _last_probe_row(plain), _last_probe_row(robust)
    assert p["step"] == r["step"] == 40
    assert 0.0 <= r["robustness/adv_acc_eps0.1"] <= r["robustness/clean_acc"] <= 1.0
    assert r["robustness/adv_acc_eps0.1"] > p["robustness/adv_acc_eps0.1"] + 0.02
