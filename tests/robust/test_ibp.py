"""Interval bound propagation (trainlab.robust.ibp) and the IBP initialisation.

Checked against what IBP must satisfy, not against its own arithmetic: every sampled input of the ball (corners
and uniform points) gives outputs and margins inside the bounds; one affine layer's bounds are the closed form
``f(x) ± ε·|J|·1`` (J the dense Jacobian) and are attained at a corner; the verified error is at least the PGD
error of :func:`trainlab.robust.attacks.pgd`, which is at least the clean error.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.models import build
from trainlab.models.cnn import ConvNet
from trainlab.models.init import apply_init
from trainlab.models.mlp import MLP
from trainlab.models.norm import GhostBatchNorm1d
from trainlab.models.parametrization import OutputScaled
from trainlab.models.reparam import apply_sigma_reparam_
from trainlab.robust.attacks import pgd
from trainlab.robust.certified import check_bounded
from trainlab.robust.ibp import check_trainable, ibp_bounds, propagate, verified_error
from trainlab.workloads.base import DataSpec

DT = torch.float64  # soundness is checked to 1e-9: no float32 rounding in the way
TOL = 1e-9


def make_model(kind: str, act: str, batchnorm: bool = True, seed: int = 0) -> tuple[nn.Module, torch.Size]:
    """A small model of ``kind`` in float64 with BatchNorm made non-trivial, and its example input shape."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model: nn.Module = MLP(10, 4, depth=2, width=12, activation_name=act, batchnorm=batchnorm)
        shape = torch.Size([10])
    elif kind == "cnn1d":
        model = ConvNet(1, 2, 4, [4, 5], 3, act, batchnorm=batchnorm)
        shape = torch.Size([2, 11])
    elif kind == "cnn1d_nochannel":
        model = ConvNet(1, 1, 4, [4, 5], 3, act, batchnorm=batchnorm)
        shape = torch.Size([11])
    else:
        model = ConvNet(2, 3, 4, [3, 4], 3, act, batchnorm=batchnorm)
        shape = torch.Size([3, 7, 6])
    model = model.to(DT)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_()  # negative gains too: r' = |s|·r must take the absolute value
                m.bias.normal_()
        model.train()
        for _ in range(3):  # running statistics different from the default (0, 1)
            model(torch.randn(16, *shape, dtype=DT) * 2 + 0.5)
    return model, shape


def clean_batch_network(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm layers normalise with the *clean* batch's mean and biased
    variance: the fixed network that the train-mode bounds are promised to hold for."""
    probe = copy.deepcopy(model).train()
    stats = {}

    def keep(name):
        def hook(module, inputs, output):
            h = inputs[0]
            dims = [0, *range(2, h.dim())]
            stats[name] = (h.mean(dim=dims), h.var(dim=dims, unbiased=False))
        return hook

    for name, m in probe.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(keep(name))
    with torch.no_grad():
        probe(x)
    fixed = copy.deepcopy(model).eval()
    for name, m in fixed.named_modules():
        if name in stats:
            m.running_mean.copy_(stats[name][0])
            m.running_var.copy_(stats[name][1])
    return fixed


def ball_samples(x: torch.Tensor, eps: float | torch.Tensor, n: int, box=None, seed: int = 0) -> torch.Tensor:
    """``(n, *x.shape)`` points of the ε-ball around every example (half corners, half uniform), clipped to
    ``box``."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n // 2, *x.shape), generator=g, dtype=DT) * 2 - 1
    uniform = torch.rand((n - n // 2, *x.shape), generator=g, dtype=DT) * 2 - 1
    points = x + torch.cat([signs, uniform]) * eps
    return points if box is None else points.clamp(*box)


def outputs_of(network: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """``(n, batch, classes)``: ``network`` on every sampled point (one big batch, eval mode)."""
    n, batch = points.shape[:2]
    with torch.no_grad():
        return network(points.reshape(n * batch, *points.shape[2:])).reshape(n, batch, -1)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize("kind", ["mlp", "cnn1d", "cnn2d"])
@torch.no_grad()
def test_bounds_contain_every_sampled_output_and_margin(kind, act, mode):
    model, shape = make_model(kind, act)
    model.train(mode == "train")
    g = torch.Generator().manual_seed(1)
    x = torch.rand((6, *shape), generator=g, dtype=DT) * 0.8 - 0.4
    y = torch.randint(0, 4, (6,), generator=g)
    eps = 0.15
    reference = clean_batch_network(model, x) if mode == "train" else copy.deepcopy(model).eval()
    free = propagate(copy.deepcopy(model), x, eps)
    boxed = propagate(copy.deepcopy(model), x, eps, bounds=(-0.5, 0.5))
    for prop, box in ((free, None), (boxed, (-0.5, 0.5))):
        lower, upper = prop.logit_bounds()
        z = outputs_of(reference, ball_samples(x, eps, 600, box))
        assert bool((z >= lower - TOL).all()) and bool((z <= upper + TOL).all())
        # the clean logits are the reference network's at x (train mode: the same batch statistics)
        torch.testing.assert_close(prop.logits, outputs_of(reference, x[None])[0])
        margins = prop.margin_lower(y)
        true_margins = z.gather(2, y[None, :, None].expand(z.shape[0], -1, 1)) - z  # (n, batch, classes)
        assert bool((margins <= true_margins.min(dim=0).values + TOL).all())
        # folding the differences into the head is never looser than l_y − u_j
        naive = lower.gather(1, y[:, None]) - upper
        others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y[:, None], False)
        assert bool((margins[others] >= naive[others] - TOL).all())
        assert bool((margins.gather(1, y[:, None]) == 0).all())
    # the data box only removes inputs, so its bounds lie inside the free ones; here it actually clips
    (fl, fu), (bl, bu) = free.logit_bounds(), boxed.logit_bounds()
    assert bool((bl >= fl - TOL).all()) and bool((bu <= fu + TOL).all())
    assert float((fu - fl).sum() - (bu - bl).sum()) > 1e-6
    assert boxed.input_radius < free.input_radius == pytest.approx(eps)


@pytest.mark.parametrize("act", ["silu", "quadratic", "identity"])
def test_other_activations_are_sound(act):
    model, shape = make_model("mlp", act, batchnorm=False)
    x = torch.randn(5, *shape, dtype=DT)
    with torch.no_grad():
        lower, upper = ibp_bounds(model, x, 0.3)
    z = outputs_of(model.eval(), ball_samples(x, 0.3, 800))
    assert bool((z >= lower - TOL).all()) and bool((z <= upper + TOL).all())


def test_per_channel_radius_and_channelless_signal():
    model, shape = make_model("cnn2d", "relu")
    model.eval()
    x = torch.randn(4, *shape, dtype=DT)
    eps = torch.tensor([0.0, 0.2, 0.05], dtype=DT).view(1, 3, 1, 1)
    with torch.no_grad():
        lower, upper = ibp_bounds(model, x, eps)
    z = outputs_of(model, ball_samples(x, eps, 600))
    assert bool((z >= lower - TOL).all()) and bool((z <= upper + TOL).all())
    model1, shape1 = make_model("cnn1d_nochannel", "relu")
    model1.eval()
    x1 = torch.randn(4, *shape1, dtype=DT)
    with torch.no_grad():
        lower, upper = ibp_bounds(model1, x1, 0.1)
    z = outputs_of(model1, ball_samples(x1, 0.1, 600))
    assert bool((z >= lower - TOL).all()) and bool((z <= upper + TOL).all())


def test_zero_radius_gives_the_logits():
    model, shape = make_model("cnn1d", "gelu")
    model.eval()
    x = torch.randn(3, *shape, dtype=DT)
    with torch.no_grad():
        lower, upper = ibp_bounds(model, x, 0.0)
        torch.testing.assert_close(lower, model(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(upper, model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.Linear(7, 5), nn.Conv1d(2, 3, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2)])
def test_one_affine_layer_is_exact_and_attained_at_a_corner(layer):
    torch.manual_seed(0)
    model = (nn.Sequential(layer) if isinstance(layer, nn.Linear) else nn.Sequential(layer, nn.Flatten())).to(DT)
    shape = {nn.Linear: (7,), nn.Conv1d: (2, 6), nn.Conv2d: (2, 5, 5)}[type(layer)]
    x = torch.randn(1, *shape, dtype=DT)
    eps = 0.3
    with torch.no_grad():
        lower, upper = ibp_bounds(model, x, eps)
        out = model(x)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *shape)).flatten(), x.flatten())
    width = eps * jac.abs().sum(dim=1)  # the closed form ε·|J|·1 from the dense matrix of the layer
    torch.testing.assert_close(upper.flatten(), out.flatten() + width, rtol=0, atol=1e-12)
    torch.testing.assert_close(lower.flatten(), out.flatten() - width, rtol=0, atol=1e-12)
    with torch.no_grad():  # output i reaches its upper bound at the corner x + ε·sign(J_i)
        corners = x.flatten() + eps * jac.sign()
        reached = model(corners.view(-1, *shape)).flatten(1).diagonal()
    torch.testing.assert_close(reached, upper.flatten(), rtol=0, atol=1e-12)


def test_linear_margin_is_the_exact_worst_case():
    torch.manual_seed(3)
    linear = nn.Linear(6, 4).to(DT)
    model = nn.Sequential(linear)
    x = torch.randn(5, 6, dtype=DT)
    y = torch.tensor([0, 1, 2, 3, 1])
    eps = 0.2
    w, b = linear.weight.detach(), linear.bias.detach()
    with torch.no_grad():
        margins = propagate(model, x, eps).margin_lower(y)
    for i in range(5):
        for j in range(4):
            d = w[y[i]] - w[j]
            worst = x[i] - eps * d.sign()  # the corner that lowers z_y − z_j most
            expected = float(d @ worst + b[y[i]] - b[j])
            assert float(margins[i, j]) == pytest.approx(expected, abs=1e-12)
            assert expected == pytest.approx(float(d @ x[i] + b[y[i]] - b[j] - eps * d.abs().sum()), abs=1e-12)


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=g) * 1.5
    y = torch.randint(0, 4, (n,), generator=g)
    return centres[y] + 0.5 * torch.randn(n, 8, generator=g), y


def train_plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_verified_error_at_least_pgd_error_at_least_clean_error(trained, batchnorm):
    x, y = blobs()
    torch.manual_seed(0)
    model = MLP(8, 4, depth=2, width=32, batchnorm=batchnorm)
    if trained:
        train_plain(model, x, y)
    model.eval()
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    verified_somewhere = False
    for eps in (0.02, 0.1, 0.3):
        gen = torch.Generator().manual_seed(0)
        adv = pgd(model, x, y, eps, alpha=2.5 * eps / 20, steps=20, restarts=3, generator=gen)
        with torch.no_grad():
            adv_wrong = model(adv).argmax(1) != y
            margins = propagate(model, x, eps).margin_lower(y)
        verified = (margins.scatter(1, y[:, None], math.inf) > 0).all(dim=1)
        # per example: a verified example is classified correctly at x and at the attack's point
        assert not bool((verified & (adv_wrong | clean_wrong)).any())
        v_err = verified_error(model, x, y, eps, batch_size=64)
        assert v_err == pytest.approx(1 - float(verified.float().mean()))
        assert v_err >= adv_wrong.float().mean() >= clean_wrong.float().mean()
        verified_somewhere |= bool(verified.any())
    assert not model.training  # verified_error restored the mode it found
    if trained:  # not vacuous: the trained model is certified on some examples at the smaller radii
        assert verified_somewhere and clean_wrong.float().mean() < 0.2


def test_verified_error_uses_eval_mode_and_restores_train_mode():
    model, shape = make_model("mlp", "relu")
    model.float().train()
    x = torch.randn(40, *shape)
    y = torch.randint(0, 4, (40,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    err = verified_error(model, x, y, 0.05, batch_size=7)
    model.eval()
    whole = verified_error(model, x, y, 0.05)
    assert err == whole  # eval mode both times: batching does not matter, running statistics do
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no statistics updated
    model.train()
    verified_error(model, x, y, 0.05)
    assert all(m.training for m in model.modules())


def linear_at(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    layer = model.get_submodule(name)
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    return layer


def test_ibp_init_std_and_untouched_output_layer():
    torch.manual_seed(0)
    model = MLP(600, 10, depth=2, width=500)
    fc0, fc1, head = (linear_at(model, n) for n in ("body.fc0", "body.fc1", "head"))
    assert fc0.bias is not None and head.bias is not None
    before = {"head": head.weight.detach().clone(), "fc0.bias": fc0.bias.detach().clone(),
              "head.bias": head.bias.detach().clone()}
    apply_init(model, "ibp")
    for layer, fan_in in ((fc0, 600), (fc1, 500)):
        w = layer.weight.detach()
        assert float(w.std()) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.01)
        assert abs(float(w.mean())) < 3 * math.sqrt(2 * math.pi) / fan_in / math.sqrt(w.numel())
    assert torch.equal(head.weight, before["head"])  # the output layer keeps its default initialisation
    assert torch.equal(fc0.bias, before["fc0.bias"]) and torch.equal(head.bias, before["head.bias"])
    conv = ConvNet(2, 3, 10, [64, 64], 3)
    conv1, conv_head = linear_at(conv, "body.conv1"), linear_at(conv, "head")
    kept = conv_head.weight.detach().clone()
    apply_init(conv, "ibp")
    w = conv1.weight.detach()  # fan_in = 64 channels · 3·3
    assert float(w.std()) == pytest.approx(math.sqrt(2 * math.pi) / (64 * 9), rel=0.02)
    assert torch.equal(conv_head.weight, kept)


def test_ibp_init_keeps_bound_radii_from_exploding_with_depth():
    """Shi et al.'s point: at the IBP init the mean radius grows ~2x per Linear and ReLU keeps about half of
    it, so pre-activation radii stay within a small factor through depth; PyTorch's default init grows them."""
    torch.manual_seed(0)
    x = torch.randn(64, 200)
    ratios = {}
    for init in ("default", "ibp"):
        model = MLP(200, 10, depth=6, width=400)
        apply_init(model, init)
        with torch.no_grad():
            prop = propagate(model, x, 0.01)
        radii = [float(((u - lo) / 2).mean()) for lo, u in prop.preactivations]
        ratios[init] = radii[-1] / radii[0]
    assert 0.2 < ratios["ibp"] < 5
    assert ratios["default"] > 5 * ratios["ibp"]


def one_line_error(fn) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_refusals_are_one_line_value_errors():
    mlp = MLP(4, 3, depth=1, width=5)
    x = torch.randn(2, 4)
    transformer = build("transformer", DataSpec("tokens", (3,), 5, "classification", vocab_size=6),
                        n_layer=1, n_head=2, d_model=8)
    assert "Transformer" in one_line_error(lambda: propagate(transformer, torch.zeros(2, 3, dtype=torch.long), 0.1))
    assert "OutputScaled" in one_line_error(lambda: propagate(OutputScaled(mlp, 2.0), x, 0.1))
    assert "real-valued" in one_line_error(lambda: propagate(nn.Sequential(nn.Linear(4, 3)),
                                                             torch.zeros(2, 4, dtype=torch.long), 0.1))
    assert "eps" in one_line_error(lambda: propagate(mlp, x, -0.1))
    assert "eps" in one_line_error(lambda: propagate(mlp, x, float("nan")))
    assert "bounds" in one_line_error(lambda: propagate(mlp, x, 0.1, bounds=(0.0, 1.0)))
    assert "LayerNorm" in one_line_error(lambda: propagate(nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3)), x, 0.1))
    assert "approximate" in one_line_error(
        lambda: propagate(nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 3)), x, 0.1))
    reparam = MLP(4, 3, depth=1, width=5)
    apply_sigma_reparam_(reparam)
    assert "SigmaReparam" in one_line_error(lambda: propagate(reparam, x, 0.1))
    assert "class indices" in one_line_error(lambda: verified_error(mlp, x, torch.rand(2), 0.1))
    assert "class indices" in one_line_error(lambda: verified_error(mlp, x, torch.zeros(3, dtype=torch.long), 0.1))


# ------------------------------------------------------------------------------- dropout and ghost BatchNorm


def with_options(kind: str, *, ghost_batch: int = 0, dropout: float = 0.0) -> tuple[nn.Module, nn.Module, tuple]:
    """``make_model(kind, "relu")`` (plain BatchNorm) and the same network, weights and running statistics, built
    with ghost BatchNorm and/or dropout layers."""
    plain, shape = make_model(kind, "relu")
    if kind == "mlp":
        other: nn.Module = MLP(10, 4, depth=2, width=12, batchnorm=True, ghost_batch=ghost_batch, dropout=dropout)
    else:
        other = ConvNet(2, 3, 4, [3, 4], 3, "relu", batchnorm=True, ghost_batch=ghost_batch, dropout=dropout)
    other.to(DT).load_state_dict(plain.state_dict())  # the same keys: dropout has no state, ghost BN BatchNorm's
    return plain, other, shape


@pytest.mark.parametrize("kind", ["mlp", "cnn2d"])
@pytest.mark.parametrize("options", [{"dropout": 0.4}, {"ghost_batch": 2}, {"dropout": 0.4, "ghost_batch": 2}])
@torch.no_grad()
def test_eval_mode_dropout_and_ghost_batchnorm_are_bounded(kind, options):
    plain, model, shape = with_options(kind, **options)
    plain.eval()
    model.eval()
    x = torch.rand((5, *shape), generator=torch.Generator().manual_seed(2), dtype=DT) - 0.5
    got, want = propagate(model, x, 0.1), propagate(plain, x, 0.1)
    # dropout passes the box through, ghost BatchNorm takes BatchNorm's rule with its running statistics
    for a, b in zip(got.logit_bounds(), want.logit_bounds()):
        assert torch.equal(a, b)
    lower, upper = got.logit_bounds()
    z = outputs_of(model, ball_samples(x, 0.1, 400))  # the eval network itself (no dropout, running statistics)
    assert bool((z >= lower - TOL).all()) and bool((z <= upper + TOL).all())
    assert len(got.preactivations) == 2  # dropout is no activation layer
    check_bounded(model)


@pytest.mark.parametrize("kind", ["mlp", "cnn2d"])
@pytest.mark.parametrize("options,layer,says", [({"dropout": 0.4}, "body.drop0", "Dropout(p=0.4)"),
                                                ({"ghost_batch": 2}, "body.bn0", "GhostBatchNorm"),
                                                ({"dropout": 0.4, "ghost_batch": 2}, "body.bn0", "GhostBatchNorm")])
def test_training_mode_dropout_and_ghost_batchnorm_are_refused(kind, options, layer, says):
    _, model, shape = with_options(kind, **options)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = one_line_error(lambda: propagate(model, torch.randn(6, *shape, dtype=DT), 0.1))
    assert repr(layer) in message and says in message
    # refused before the clean forward pass: no running statistic moved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    check_bounded(model)  # structure only: the certified probe bounds such a model in eval mode
    # the verified error (eval mode) is the plain network's, and the training mode is restored
    x, y = torch.randn(12, *shape, dtype=DT), torch.randint(0, 4, (12,))
    plain = with_options(kind)[0]
    assert verified_error(model, x, y, 0.05) == verified_error(plain, x, y, 0.05)
    assert all(m.training for m in model.modules())


def test_dropout_at_zero_and_ghost_batchnorm_without_running_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.0), nn.Linear(5, 3)).to(DT).train()
    x = torch.randn(3, 4, dtype=DT)
    without = nn.Sequential(net[0], net[1], net[3])
    for a, b in zip(ibp_bounds(net, x, 0.2), ibp_bounds(without, x, 0.2)):  # p = 0: the identity, in any mode
        assert torch.equal(a, b)
    # without running statistics a ghost BatchNorm normalises per ghost batch in eval mode too
    ghost = nn.Sequential(nn.Linear(4, 5), GhostBatchNorm1d(5, 2, track_running_stats=False), nn.Linear(5, 3)).eval()
    assert "'1'" in one_line_error(lambda: propagate(ghost, torch.randn(4, 4), 0.1))
    # exact types: a subclass of Dropout with another forward has no rule
    class Scaled(nn.Dropout):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return 2 * h

    odd = nn.Sequential(nn.Linear(4, 3), Scaled(0.0)).eval()
    assert "Scaled" in one_line_error(lambda: propagate(odd, torch.randn(2, 4), 0.1))
    assert "Scaled" in one_line_error(lambda: check_bounded(odd))


@pytest.mark.parametrize("options,layer", [({"dropout": 0.4}, "body.drop0"), ({"ghost_batch": 2}, "body.bn0"),
                                           ({}, None)])
def test_check_trainable_refuses_in_any_mode(options, layer):
    # certified training refuses such a model when it is built, even if it is in eval mode then
    model = with_options("mlp", **options)[1].eval()
    if layer is None:
        check_trainable(model)
        check_trainable(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0)))
    else:
        assert repr(layer) in one_line_error(lambda: check_trainable(model))
    assert not model.training  # judged, not switched
