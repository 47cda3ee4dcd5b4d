"""The 1-D and 2-D CNNs: shapes, sizes, input layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.config import ConfigError
from trainlab.models import build
from trainlab.models.cnn import ConvNet
from trainlab.models.norm import GhostBatchNorm1d, GhostBatchNorm2d
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


# ------------------------------------------------------------------------ ghost batch norm and dropout options


@pytest.mark.parametrize("name,spec", [("cnn1d", SIGNAL), ("cnn2d", GRAY)])
def test_defaults_keep_the_structure_and_state_dict(name, spec):
    model = build(name, spec, depth=2)
    assert [n for n, _ in model.body.named_children()] == ["conv0", "act0", "pool0", "conv1", "act1", "pool1"]
    assert list(model.state_dict()) == ["body.conv0.weight", "body.conv0.bias", "body.conv1.weight",
                                        "body.conv1.bias", "head.weight", "head.bias"]
    bn = build(name, spec, depth=2, batchnorm=True)
    assert [n for n, _ in bn.body.named_children()] == ["conv0", "bn0", "act0", "pool0", "conv1", "bn1", "act1",
                                                        "pool1"]
    assert type(bn.body.bn0) is (nn.BatchNorm1d if name == "cnn1d" else nn.BatchNorm2d)


def test_default_cnn1d_output_is_the_hand_built_network():
    torch.manual_seed(0)
    model = build("cnn1d", SIGNAL, depth=2, channels=4)
    torch.manual_seed(0)
    convs_ = [nn.Conv1d(1, 4, 5, padding="same"), nn.Conv1d(4, 4, 5, padding="same")]
    head = nn.Linear(4, 10)
    x = torch.randn(3, 1, 40)
    h = x
    for conv in convs_:
        h = torch.nn.functional.max_pool1d(torch.relu(conv(h)), 2, ceil_mode=True)
    assert torch.equal(model.train()(x), head(h.mean(dim=2)))


@pytest.mark.parametrize("name,spec,ghost_cls,plain_cls", [("cnn1d", SIGNAL, GhostBatchNorm1d, nn.BatchNorm1d),
                                                           ("cnn2d", GRAY, GhostBatchNorm2d, nn.BatchNorm2d)])
def test_ghost_batch_option(name, spec, ghost_cls, plain_cls):
    torch.manual_seed(0)
    ghost = build(name, spec, depth=2, channels=4, batchnorm=True, ghost_batch=3)
    plain = build(name, spec, depth=2, channels=4, batchnorm=True)
    assert type(ghost.body.bn0) is ghost_cls and type(ghost.body.bn1) is ghost_cls and ghost.body.bn1.ghost_batch == 3
    assert list(ghost.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(7, *spec.input_shape)  # ghost batches of 3, 3 and 1 (one example still has many positions)
    # convolutions of 7 and of 3 examples may round differently: close, not bitwise equal
    torch.testing.assert_close(ghost(x), torch.cat([plain(x[:3]), plain(x[3:6]), plain(x[6:])]))
    assert not torch.allclose(ghost(x), plain(x), atol=1e-3)
    plain.load_state_dict(ghost.state_dict())
    ghost.eval()
    plain.eval()
    assert torch.equal(ghost(x), plain(x))


@pytest.mark.parametrize("name,spec", [("cnn1d", SIGNAL), ("cnn2d", GRAY)])
def test_bad_ghost_batch_and_dropout(name, spec):
    with pytest.raises(ConfigError) as err:
        build(name, spec, ghost_batch=32)
    assert err.value.key == "model.ghost_batch" and "batchnorm" in str(err.value) and "\n" not in str(err.value)
    for bad in (1.0, -0.5):
        with pytest.raises(ConfigError) as err:
            build(name, spec, dropout=bad)
        assert err.value.key == "model.dropout"


@pytest.mark.parametrize("name,spec", [("cnn1d", SIGNAL), ("cnn2d", GRAY)])
def test_dropout_option_after_each_pool(name, spec):
    torch.manual_seed(0)
    model = build(name, spec, depth=2, channels=8, dropout=0.5)
    torch.manual_seed(0)
    plain = build(name, spec, depth=2, channels=8)
    assert [n for n, _ in model.body.named_children()] == ["conv0", "act0", "pool0", "drop0", "conv1", "act1",
                                                           "pool1", "drop1"]
    assert model.body.drop1.p == 0.5 and list(model.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, *spec.input_shape)
    assert torch.equal(model.eval()(x), plain(x))
    # training: the pooled stage output is what is dropped (zeros or the pooled value / (1 - p))
    model.train()
    pooled = model.body[:3](x)
    torch.manual_seed(1)
    dropped = model.body.drop0(pooled)
    zero = (dropped == 0) & (pooled != 0)
    assert 0.35 < float(zero.float().sum() / (pooled != 0).float().sum()) < 0.65
    torch.testing.assert_close(dropped[dropped != 0], 2 * pooled[dropped != 0])
