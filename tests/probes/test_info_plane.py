"""The information-plane probe: binned I(X;T) and I(T;Y) against discrete known cases, the plug-in bias, a binary
Gaussian channel's closed form, and through the registry."""

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.models.cnn import ConvNet
from trainlab.models.mlp import MLP
from trainlab.models.transformer import Transformer
from trainlab.probes.info_plane import (
    METHODS,
    Method,
    bin_edges,
    digitize,
    entropy_bits,
    hidden_activations,
    info_plane,
    layer_information,
)
from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext
from trainlab.train.config import ProbeOptions

LN2 = math.log(2)


def empirical_entropy(y: Tensor) -> float:
    p = torch.bincount(y).double() / len(y)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


# ------------------------------------------------------------------------------------------ the binning


def test_fixed_edges_are_equal_width_on_min_max_or_the_given_bounds() -> None:
    t = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    torch.testing.assert_close(bin_edges(t, 4), torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    assert digitize(t, bin_edges(t, 4)).tolist() == [[0, 1], [3, 3]]  # the maximum closes the last bin
    tanh = torch.tensor([[-0.99], [0.0], [0.2], [0.99]])
    edges = bin_edges(tanh, 4, bounds=(-1.0, 1.0))
    torch.testing.assert_close(edges, torch.tensor([-1.0, -0.5, 0.0, 0.5], dtype=torch.float64))
    assert digitize(tanh, edges).view(-1).tolist() == [0, 2, 2, 3]
    assert bin_edges(torch.full((5, 3), 0.5), 30).tolist() == [0.5]  # constant: one bin


def test_adaptive_edges_follow_chelombievs_rule() -> None:
    # ReLU-like: three exact zeros, then the distinct values 1..8 (U = 8) into B = 4 bins: the minimum's own
    # edge, u_{floor(kU/B)+1} = 1, 3, 5, 7 for k = 0..3, and the maximum 8 as the last edge
    t = torch.tensor([0.0, 0.0, 0.0, 1, 2, 3, 4, 5, 6, 7, 8]).view(-1, 1)
    edges = bin_edges(t, 4, "adaptive")
    assert edges.tolist() == [0.0, 1.0, 3.0, 5.0, 7.0, 8.0]
    assert digitize(t, edges).view(-1).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    # repeated values count once: the bins hold equal numbers of *distinct* values
    assert bin_edges(torch.tensor([[1.0], [1.0], [2.0], [2.0], [2.0]]), 30, "adaptive").tolist() == [1.0, 2.0]


def test_entropy_of_rows() -> None:
    assert entropy_bits(torch.tensor([[0, 1], [0, 1], [1, 0], [2, 2]])) == pytest.approx(1.5)
    assert entropy_bits(torch.zeros(7, 3, dtype=torch.long)) == 0.0


# ----------------------------------------------------------------------------------- known discrete cases


@pytest.mark.parametrize("method", METHODS)
def test_a_layer_copying_the_label_has_i_ty_equal_to_h_y(method: Method) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    t = torch.stack([y.float(), 2.0 * y.float(), -y.float()], dim=1)  # three units, each a copy of y
    i_xt, i_ty = layer_information(t, y, bins=30, method=method)
    h_y = empirical_entropy(y)
    assert 1.5 < h_y <= math.log2(3)
    assert i_ty == pytest.approx(h_y, abs=1e-12) and i_xt == pytest.approx(h_y, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_constant_activations_carry_no_information(method: Method) -> None:
    y = torch.randint(0, 4, (100,), generator=torch.Generator().manual_seed(1))
    assert layer_information(torch.full((100, 5), 0.3), y, bins=30, method=method) == (0.0, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_independent_labels_give_zero_up_to_the_plug_in_bias(method: Method) -> None:
    # T (one unit, B = 4 bins: K = 4 cells) independent of Y (C = 2): 2N ln2 · Î(T;Y) ~ χ²((K−1)(C−1)) = χ²(3),
    # mean 3 and sd sqrt(6); six sd above the mean is the bound: Î ≤ (3 + 6√6) / (2N ln 2) = 0.0032 bits at N = 4000
    n = 4000
    g = torch.Generator().manual_seed(2)
    t, y = torch.randn(n, 1, generator=g), torch.randint(0, 2, (n,), generator=g)
    i_xt, i_ty = layer_information(t, y, bins=4, method=method)
    k = len(torch.unique(digitize(t, bin_edges(t, 4, method))))
    df = (k - 1) * 1
    assert 0.0 <= i_ty <= (df + 6 * math.sqrt(2 * df)) / (2 * n * LN2)
    assert i_xt > 1.0  # T itself does carry information about X (about log2 K bits)


def test_fine_bins_give_every_example_its_own_cell_and_saturate() -> None:
    # the documented weakness: with all N rows distinct, Î(X;T) = log2 N and Î(T;Y) = Ĥ(Y) even for random labels
    g = torch.Generator().manual_seed(3)
    t, y = torch.randn(64, 20, generator=g), torch.randint(0, 2, (64,), generator=g)
    i_xt, i_ty = layer_information(t, y, bins=30)
    assert i_xt == pytest.approx(6.0) and i_ty == pytest.approx(empirical_entropy(y))


# ---------------------------------------------------------------------------- a binary Gaussian channel


def bi_awgn(mu: float, sigma: float) -> tuple[float, float]:
    """I(T;Y) in bits for Y = ±1 equiprobable and T = μY + σZ, and E[i²] of the information density i(t;y):
    I = 1 − E[log2(1 + exp(−2μT/σ²))] with T ~ N(μ, σ²) (by symmetry), by quadrature on a fine grid."""
    z = torch.linspace(-14, 14, 400_001, dtype=torch.float64)
    phi = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    density = 1 - torch.log2(1 + torch.exp(-2 * mu * (mu + sigma * z) / sigma**2))
    return float(torch.trapezoid(phi * density, z)), float(torch.trapezoid(phi * density**2, z))


@pytest.mark.parametrize("method", METHODS)
def test_binary_gaussian_channel_approaches_the_closed_form_as_bins_grow(method: Method) -> None:
    mu, sigma, n = 1.0, 1.0, 40_000
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    t = ((2 * y - 1) * mu + sigma * torch.randn(n, generator=g, dtype=torch.float64)).view(-1, 1)
    exact, second = bi_awgn(mu, sigma)
    assert exact == pytest.approx(0.4859, abs=1e-4)
    sd = math.sqrt((second - exact**2) / n)  # sampling sd of the plug-in estimate, about 0.004 bits
    errors = []
    for bins in (4, 16, 64):
        _, estimate = layer_information(t, y, bins=bins, method=method)
        edges = bin_edges(t, bins, method)
        cells = digitize(t, edges).view(-1)
        # Tolerance. Quantisation loss I(T;Y) − I(T_bin;Y) = E[KL(p(y|t) ‖ p(y|cell))]: the posterior log-odds is
        # 2μt/σ², so within a cell of width w it moves by at most 2μw/σ², and the KL between Bernoullis whose
        # log-odds differ by δ is at most δ²/8 nats -- loss ≤ Σ_cells P(cell)·(2μw/σ²)²/(8 ln 2). Plug-in bias:
        # about (K−1)/(2N ln 2) upwards. Sampling: 4 sd.
        widths = torch.cat([edges[1:], t.max().view(1)]) - edges
        p_cell = torch.bincount(cells, minlength=len(edges)).double() / n
        loss_bound = float((p_cell * (2 * mu * widths / sigma**2) ** 2).sum()) / (8 * LN2)
        bias = (len(torch.unique(cells)) - 1) / (2 * n * LN2)
        assert exact - loss_bound - 4 * sd <= estimate <= exact + bias + 4 * sd  # binning can only lose information
        errors.append(abs(estimate - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 and errors[0] > 0.02  # 4 bins lose measurably, 64 are within 0.01 bits


# ------------------------------------------------------------------------------------- model and registry


def context(model: nn.Module, x: Tensor, y: Tensor, **options: Any) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"), x_train=x,
                        y_train=y, x_val=x, y_val=y, step=0, lr=0.1,
                        options=ProbeOptions(names=("info_plane",), **options))


def probe(ctx: ProbeContext) -> dict[str, float]:
    return PROBES.get("info_plane").factory(ctx)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_registry_run_on_an_mlp_reads_every_hidden_layer(activation: str) -> None:
    torch.manual_seed(0)
    model = MLP(8, 3, depth=3, width=6, activation_name=activation, dropout=0.2)
    model.train()
    x = torch.randn(128, 8)
    y = torch.randint(0, 3, (128,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    out = probe(context(model, x, y, info_plane_bins=4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in hidden_activations(model))  # hooks removed
    assert set(out) == {f"{m}/{q}/layer{i}" for m in METHODS for q in ("I_XT", "I_TY") for i in range(3)}
    h_y = empirical_entropy(y)
    for m in METHODS:
        for i in range(3):
            i_xt, i_ty = out[f"{m}/I_XT/layer{i}"], out[f"{m}/I_TY/layer{i}"]
            assert 0 <= i_ty <= min(i_xt, h_y) + 1e-12 and 0 < i_xt <= math.log2(128) + 1e-12
    # the hooks read exactly the activations: recompute layer 1 by hand (eval mode: no dropout)
    with torch.no_grad():
        h = model.body[: list(dict(model.body.named_children())).index("act1") + 1].eval()(x)
    bounds = (-1.0, 1.0) if activation == "tanh" else None
    expected = layer_information(h, y, bins=4, method="fixed", bounds=bounds)
    assert (out["fixed/I_XT/layer1"], out["fixed/I_TY/layer1"]) == pytest.approx(expected)


def test_a_cnn_layers_units_are_channels_times_positions() -> None:
    torch.manual_seed(0)
    model = ConvNet(1, 1, 4, [3, 3], 3, "relu")
    out = info_plane(model, torch.randn(32, 1, 16), torch.randint(0, 4, (32,)), bins=3)
    assert {k.rsplit("/", 1)[1] for k in out} == {"layer0", "layer1"}


def test_not_applicable_without_hidden_activations_or_class_labels() -> None:
    x = torch.randint(0, 7, (8, 5))
    transformer = Transformer(7, 5, 7, lm=False, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(NotApplicable, match="body.act"):
        probe(context(transformer, x, torch.randint(0, 7, (8,))))
    with pytest.raises(NotApplicable, match="class label"):
        probe(context(MLP(4, 1, depth=1, width=4), torch.randn(8, 4), torch.randn(8)))
    with pytest.raises(ValueError, match="no body.act"):
        info_plane(nn.Linear(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
