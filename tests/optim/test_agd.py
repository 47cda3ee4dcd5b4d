"""AGD: the initialisation, one step against a hand computation, convolutions per kernel position, the
unsupported-model errors, the schedule multiplier, and training through the trainer."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

import trainlab
from trainlab import optim
from trainlab.config import ConfigError
from trainlab.models import build as build_model
from trainlab.optim.agd import AGD, agd_init_, agd_update, singular_value
from trainlab.workloads.base import DataSpec


def two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))


def test_build_initialises_orthogonal_times_sqrt_fan_ratio():
    model = two_layer()
    optim.build("agd", model)
    for layer in (model[0], model[2]):
        s = torch.linalg.svdvals(layer.weight.detach())
        out_f, in_f = layer.weight.shape
        torch.testing.assert_close(s, torch.full_like(s, math.sqrt(out_f / in_f)), rtol=1e-5, atol=1e-6)


def test_one_step_matches_a_hand_computation():
    model = two_layer()
    opt = optim.build("agd", model, gain=2.0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    W0, W1 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    g0, g1 = model[0].weight.grad.clone(), model[2].weight.grad.clone()
    s0, s1 = math.sqrt(8 / 5), math.sqrt(3 / 8)
    n0, n1 = g0.norm().item(), g1.norm().item()
    G = (s0 * n0 + s1 * n1) / 2  # L = 2 weight tensors
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), W0 - 2.0 * eta / 2 * s0 * g0 / n0)
    torch.testing.assert_close(model[2].weight.detach(), W1 - 2.0 * eta / 2 * s1 * g1 / n1)
    assert opt.last_eta.item() == pytest.approx(eta, rel=1e-6)
    # Each layer moved by exactly gain·η/L·σ_k in Frobenius norm.
    assert (model[0].weight.detach() - W0).norm().item() == pytest.approx(2.0 * eta / 2 * s0, rel=1e-5)


def test_the_group_lr_multiplies_the_step_so_a_schedule_scales_it():
    model = two_layer()
    opt = optim.build("agd", model)
    assert [g["lr"] for g in opt.param_groups] == [1.0]
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = model[0].weight.detach().clone()
    full = [u.clone() for u in agd_update([p.grad for p in model.parameters()])[0]]
    opt.param_groups[0]["lr"] = 0.25  # what the trainer does with a multiplier of 0.25
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), before - 0.25 * full[0])


def test_conv_weights_per_kernel_position():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, bias=False)
    agd_init_(conv)
    sv = singular_value(conv.weight.shape)
    assert sv == pytest.approx(math.sqrt(6 / 4) / 3)
    for i in range(3):
        for j in range(3):
            s = torch.linalg.svdvals(conv.weight[:, :, i, j].detach())
            torch.testing.assert_close(s, torch.full_like(s, sv), rtol=1e-5, atol=1e-6)
    g = torch.randn(6, 4, 3, 3)
    (update,), eta = agd_update([g])
    per_position = torch.linalg.vector_norm(g, dim=(0, 1))
    assert eta.item() == pytest.approx(math.log((1 + math.sqrt(1 + 4 * sv * per_position.sum().item())) / 2))
    torch.testing.assert_close(torch.linalg.vector_norm(update, dim=(0, 1)), torch.full((3, 3), eta.item() * sv))


def test_unsupported_models_are_refused_naming_the_parameter():
    mlp = build_model("mlp", DataSpec("vector", (10,), 3, "classification"), depth=2, width=8)
    with pytest.raises(ConfigError, match=r"agd: model has a bias \(body\.fc0\.bias\); use model\.bias=false"):
        optim.build("agd", mlp)
    transformer = build_model("transformer", DataSpec("tokens", (5,), 7, "lm", vocab_size=7), n_layer=1, d_model=16,
                              n_head=2, bias=False, layernorm=False)
    with pytest.raises(ConfigError, match=r"agd: model has an embedding \(tok_emb\.weight\)"):
        optim.build("agd", transformer)
    with pytest.raises(ConfigError, match=r"normalisation layer with parameters \(1\.weight\)"):
        optim.build("agd", nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4)))
    cnn = build_model("cnn1d", DataSpec("signal", (1, 40), 10, "classification"), channels=4)
    with pytest.raises(ConfigError, match=r"bias \(body\.conv0\.bias\); the bundled CNNs always have conv biases"):
        optim.build("agd", cnn)
    with pytest.raises(ConfigError, match=r"agd: parameter 0 has shape \(3,\)"):
        AGD([torch.zeros(3, requires_grad=True)])
    before = mlp.body.fc0.weight.detach().clone()
    with pytest.raises(ConfigError):
        optim.build("agd", mlp)
    assert torch.equal(mlp.body.fc0.weight, before)  # refused before touching the weights


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("gain", "factor"), [(1.0, 0.995), (10.0, 0.5)])
def test_trains_modular_with_a_bias_free_mlp(tmp_path, gain, factor):
    # Measured (p=23, width 64, 60 steps): gain 1 3.139 -> 3.10, gain 10 3.139 -> ~1.
    metrics = rows(trainlab.run(None, ["workload.p=23", "model.width=64", "model.bias=false", "steps=60",
                                       "eval_every=20", "optimizer=agd", f"optimizer.gain={gain}"],
                                out=tmp_path / "run", quiet=True, report=False))
    losses = [r["train_loss"] for r in metrics]
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < factor * losses[0]
    assert metrics[0]["lr"] == 1.0
