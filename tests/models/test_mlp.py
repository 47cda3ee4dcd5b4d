"""The MLP: structure, depth 0, activations, biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.config import ConfigError
from trainlab.models import build
from trainlab.models.layers import Quadratic
from trainlab.models.mlp import MLP
from trainlab.models.norm import GhostBatchNorm1d
from trainlab.workloads.base import DataSpec

VECTOR = DataSpec("vector", (194,), 97, "classification")
IMAGE = DataSpec("image", (3, 8, 8), 10, "classification")


def linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_default_structure():
    model = build("mlp", VECTOR)
    assert isinstance(model, MLP)
    assert linears(model) == ["body.fc0", "body.fc1", "head"]
    assert model.body.fc0.in_features == 194 and model.body.fc0.out_features == 200
    assert model.head.in_features == 200 and model.head.out_features == 97
    assert isinstance(model.body.act0, nn.ReLU)
    assert sum(p.numel() for p in model.parameters()) == 194 * 200 + 200 + 200 * 200 + 200 + 200 * 97 + 97
    # the head is the last module that runs
    assert list(model.named_children())[-1][0] == "head"


def test_depth_zero_is_a_linear_model():
    model = build("mlp", VECTOR, depth=0)
    assert linears(model) == ["head"] and model.head.in_features == 194
    x, y = torch.randn(2, 194), torch.randn(2, 194)
    b = model.head.bias
    torch.testing.assert_close(model(x + y), model(x) + model(y) - b)


def test_images_are_flattened():
    model = build("mlp", IMAGE, width=16, depth=3)
    assert model.body.fc0.in_features == 3 * 8 * 8
    assert model.features(torch.randn(5, 3, 8, 8)).shape == (5, 16)
    assert len(linears(model)) == 4


def test_identity_activation_gives_a_linear_network():
    model = build("mlp", VECTOR, activation="identity", bias=False, depth=3, width=16)
    x, y = torch.randn(2, 194), torch.randn(2, 194)
    torch.testing.assert_close(model(2 * x - y), 2 * model(x) - model(y), rtol=1e-4, atol=1e-5)


def test_quadratic_activation_squares():
    model = build("mlp", VECTOR, activation="quadratic", bias=False, depth=1, width=16)
    assert isinstance(model.body.act0, Quadratic)
    x = torch.randn(3, 194)
    torch.testing.assert_close(model(-x), model(x))
    torch.testing.assert_close(model(x), model.head(model.body.fc0(x) ** 2))


@pytest.mark.parametrize("name,cls", [("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh), ("silu", nn.SiLU),
                                      ("identity", nn.Identity), ("quadratic", Quadratic)])
def test_activation_option(name, cls):
    model = build("mlp", VECTOR, activation=name, depth=2, width=4)
    assert isinstance(model.body.act0, cls) and isinstance(model.body.act1, cls)
    assert model.body.act0 is not model.body.act1


def test_bias_false_removes_every_bias():
    model = build("mlp", VECTOR, bias=False)
    assert [n for n, _ in model.named_parameters()] == ["body.fc0.weight", "body.fc1.weight", "head.weight"]


def test_small_init_scale_shrinks_the_output():
    torch.manual_seed(0)
    base = build("mlp", VECTOR, depth=2)
    torch.manual_seed(0)
    small = build("mlp", VECTOR, depth=2, init_scale=0.1, bias=True)
    x = torch.randn(4, 194)
    # a positively homogeneous network: weights and biases scaled by a scale each layer compound
    assert small(x).abs().max() < 0.05 * base(x).abs().max()


@pytest.mark.parametrize("key,value", [("depth", -1), ("width", 0), ("activation", "softplus"), ("bias", "maybe")])
def test_bad_options(key, value):
    with pytest.raises(ConfigError) as err:
        build("mlp", VECTOR, **{key: value})
    assert err.value.key == f"model.{key}"


# ------------------------------------------------------------------------ ghost batch norm and dropout options


def test_defaults_keep_the_structure_state_dict_and_outputs():
    # a reference built by hand in the same order draws the same initial weights from the same seed
    torch.manual_seed(0)
    model = build("mlp", VECTOR)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(1), nn.Linear(194, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU())
    head = nn.Linear(200, 97)
    assert list(model.state_dict()) == ["body.fc0.weight", "body.fc0.bias", "body.fc1.weight", "body.fc1.bias",
                                        "head.weight", "head.bias"]
    assert [n for n, _ in model.body.named_children()] == ["flatten", "fc0", "act0", "fc1", "act1"]
    x = torch.randn(5, 194)
    model.train()  # no dropout layer: train and eval are the same function
    assert torch.equal(model(x), head(body(x)))
    # batchnorm=true alone is plain BatchNorm1d over the whole batch, as before
    bn = build("mlp", VECTOR, batchnorm=True)
    assert [n for n, _ in bn.body.named_children()] == ["flatten", "fc0", "bn0", "act0", "fc1", "bn1", "act1"]
    assert type(bn.body.bn0) is nn.BatchNorm1d and type(bn.body.bn1) is nn.BatchNorm1d


def test_ghost_batch_option():
    torch.manual_seed(0)
    ghost = build("mlp", VECTOR, batchnorm=True, ghost_batch=4, width=16)
    plain = build("mlp", VECTOR, batchnorm=True, width=16)
    assert type(ghost.body.bn0) is GhostBatchNorm1d and ghost.body.bn0.ghost_batch == 4
    assert type(ghost.body.bn1) is GhostBatchNorm1d
    assert list(ghost.state_dict()) == list(plain.state_dict())  # checkpoints keep BatchNorm's format
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(8, 194)
    # one ghost batch: ordinary BatchNorm; two: each half normalised on its own
    assert torch.equal(ghost(x[:4]), plain(x[:4]))
    assert torch.equal(ghost(x), torch.cat([plain(x[:4]), plain(x[4:])]))
    for key, value in ghost.state_dict().items():  # the running statistics moved as those BatchNorm calls moved them
        assert torch.equal(value, plain.state_dict()[key])
    assert not torch.allclose(ghost(x), plain(x), atol=1e-3)
    plain.load_state_dict(ghost.state_dict())
    ghost.eval()
    plain.eval()
    assert torch.equal(ghost(x), plain(x))  # eval: running statistics, as BatchNorm


@pytest.mark.parametrize("options,key", [({"ghost_batch": 32}, "model.ghost_batch"),
                                         ({"ghost_batch": 1, "batchnorm": True}, "model.ghost_batch"),
                                         ({"ghost_batch": -1, "batchnorm": True}, "model.ghost_batch"),
                                         ({"dropout": 1.0}, "model.dropout"), ({"dropout": -0.1}, "model.dropout")])
def test_bad_ghost_batch_and_dropout(options, key):
    with pytest.raises(ConfigError) as err:
        build("mlp", VECTOR, **options)
    assert err.value.key == key and "\n" not in str(err.value)
    if options.get("ghost_batch") == 32:
        assert "batchnorm" in str(err.value)


def test_dropout_option():
    torch.manual_seed(0)
    model = build("mlp", VECTOR, dropout=0.5, width=64, activation="identity")
    torch.manual_seed(0)
    plain = build("mlp", VECTOR, width=64, activation="identity")
    assert [n for n, _ in model.body.named_children()] == ["flatten", "fc0", "act0", "drop0", "fc1", "act1",
                                                           "drop1"]
    assert isinstance(model.body.drop0, nn.Dropout) and model.body.drop0.p == 0.5
    assert list(model.state_dict()) == list(plain.state_dict())
    x = torch.randn(32, 194)
    model.eval()
    assert torch.equal(model(x), plain(x))  # eval: no dropout
    # training: each unit after the activation is zeroed with probability p, the others scaled by 1/(1 - p)
    one = build("mlp", VECTOR, dropout=0.25, depth=1, width=64, activation="identity").train()
    torch.manual_seed(1)
    dropped = one.features(x)
    kept = one.body.fc0(x)
    zero = dropped == 0
    assert 0.17 < float(zero.float().mean()) < 0.33
    torch.testing.assert_close(dropped[~zero], kept[~zero] / 0.75)
