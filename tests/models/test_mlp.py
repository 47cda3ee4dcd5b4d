"""The MLP: structure, depth 0, activations, biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.config import ConfigError
from trainlab.models import build
from trainlab.models.layers import Quadratic
from trainlab.models.mlp import MLP
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
