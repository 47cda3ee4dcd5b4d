"""The 1-D and 2-D CNNs: shapes, sizes, input layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.models import build
from trainlab.models.cnn import ConvNet
from trainlab.workloads.base import DataSpec

SIGNAL = DataSpec("signal", (1, 40), 10, "classification")
GRAY = DataSpec("image", (1, 28, 28), 10, "classification")
RGB = DataSpec("image", (3, 32, 32), 10, "classification")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


def test_cnn1d_default_is_small():
    model = build("cnn1d", SIGNAL)
    assert isinstance(model, ConvNet)
    layers = convs(model, nn.Conv1d)
    assert [c.out_channels for c in layers] == [32, 32, 32]
    assert all(c.kernel_size == (5,) for c in layers)
    assert n_params(model) < 50_000
    assert model.head.in_features == 32 and model.head.out_features == 10


def test_cnn1d_reads_signals_with_or_without_channel_axis():
    torch.manual_seed(0)
    model = build("cnn1d", SIGNAL)
    x = torch.randn(4, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


def test_cnn1d_downsamples_and_keeps_length_with_padding():
    model = build("cnn1d", SIGNAL)
    h = model.body(torch.randn(2, 1, 40))
    assert h.shape == (2, 32, 5)  # 40 -> 20 -> 10 -> 5


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("kernel_size", [1, 4, 7])
@pytest.mark.parametrize("length", [1, 13, 40])
def test_cnn1d_any_kernel_and_length(kernel_size, length):
    spec = DataSpec("signal", (2, length), 3, "classification")
    model = build("cnn1d", spec, kernel_size=kernel_size, depth=6, channels=4)
    assert model(torch.randn(2, 2, length)).shape == (2, 3)


def test_cnn2d_channels_double():
    model = build("cnn2d", RGB)
    layers = convs(model, nn.Conv2d)
    assert [c.in_channels for c in layers] == [3, 32, 64]
    assert [c.out_channels for c in layers] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) for c in layers)
    assert model.head.in_features == 128
    assert model.body(torch.randn(1, 3, 32, 32)).shape == (1, 128, 4, 4)
    assert model.body(torch.randn(1, 1, 28, 28)[:, :1].expand(1, 3, 28, 28)).shape == (1, 128, 4, 4)  # 28->14->7->4


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["28x28x1", "32x32x3"])
def test_cnn2d_deep_stacks_on_small_images(spec):
    model = build("cnn2d", spec, depth=6, channels=2)
    assert model(torch.randn(2, *spec.input_shape)).shape == (2, 10)


def test_cnn2d_reads_gray_images_without_channel_axis():
    torch.manual_seed(0)
    model = build("cnn2d", GRAY, channels=4)
    x = torch.randn(3, 28, 28)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


@pytest.mark.parametrize("name,spec", [("cnn1d", SIGNAL), ("cnn2d", GRAY)])
def test_activation_option(name, spec):
    model = build(name, spec, activation="tanh", channels=4)
    assert len(convs(model, nn.Tanh)) == 3 and not convs(model, nn.ReLU)


def test_global_average_pool_is_translation_robust():
    # a circular shift by the total pooling stride changes the pooled features only near the borders
    torch.manual_seed(0)
    model = build("cnn1d", DataSpec("signal", (1, 128), 10, "classification"))
    x = torch.zeros(1, 1, 128)
    x[..., 56:64] = torch.randn(8)
    shifted = torch.roll(x, 8, dims=-1)
    torch.testing.assert_close(model.features(x), model.features(shifted), rtol=1e-5, atol=1e-5)
