"""Shared layers: activations by name and the init-scale helper."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

from trainlab.models.layers import ACTIVATIONS, Activation, Quadratic, activation, count_parameters, scale_parameters_


def test_activation_names_match_the_option_type():
    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_builds_a_fresh_module(name):
    a, b = activation(name), activation(name.upper())
    assert isinstance(a, nn.Module) and a is not b
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    assert a(x).dtype == torch.float64


def test_activation_values():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    torch.testing.assert_close(activation("quadratic")(x), x**2)
    torch.testing.assert_close(activation("identity")(x), x)
    torch.testing.assert_close(activation("relu")(x), x.clamp_min(0))
    torch.testing.assert_close(activation("tanh")(x), torch.tanh(x))
    assert isinstance(activation("quadratic"), Quadratic)


def test_unknown_activation():
    with pytest.raises(ValueError, match="allowed: relu"):
        activation("softplus")


def test_scale_parameters_scales_every_parameter_once():
    torch.manual_seed(0)
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head, "norm": nn.LayerNorm(3)})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert scale_parameters_(model, 2.0) is model
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, 2.0 * before[n])
    assert model["head"].weight is model["emb"].weight
    assert count_parameters(model) == 15 + 5 + 6
    scale_parameters_(model, 1.0)
    torch.testing.assert_close(model["norm"].weight, torch.full((3,), 2.0))
