"""The Muon/AdamW parameter split on every bundled model, with name-pattern and function overrides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.models import build
from trainlab.optim.param_split import explain, split
from trainlab.workloads.base import DataSpec

MLP = build("mlp", DataSpec("vector", (10,), 3, "classification"), depth=2, width=8)
CNN1D = build("cnn1d", DataSpec("signal", (1, 40), 10, "classification"), channels=4)
CNN2D = build("cnn2d", DataSpec("image", (1, 12, 12), 10, "classification"), channels=4, depth=2)
TRANSFORMER = build("transformer", DataSpec("tokens", (5,), 7, "lm", vocab_size=7), n_layer=1, d_model=16, n_head=2)


def names(model, rules=None):
    muon, adam = split(model, rules)
    return list(muon), list(adam)


def test_mlp_hidden_layers_to_muon_head_and_biases_to_adamw():
    muon, adam = names(MLP)
    assert muon == ["body.fc0.weight", "body.fc1.weight"]
    assert adam == ["body.fc0.bias", "body.fc1.bias", "head.weight", "head.bias"]


def test_cnns_keep_the_first_conv_and_the_head_on_adamw():
    muon, adam = names(CNN1D)
    assert muon == ["body.conv1.weight", "body.conv2.weight"]
    assert adam == ["body.conv0.weight", "body.conv0.bias", "body.conv1.bias", "body.conv2.bias",
                    "head.weight", "head.bias"]
    muon, adam = names(CNN2D)
    assert muon == ["body.conv1.weight"]
    assert "body.conv0.weight" in adam and "head.weight" in adam


def test_transformer_embeddings_norms_and_head_to_adamw():
    muon, adam = names(TRANSFORMER)
    assert muon == ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc.weight",
                    "blocks.0.mlp.proj.weight"]
    assert adam[:2] == ["tok_emb.weight", "pos_emb.weight"]
    assert {"blocks.0.ln1.weight", "ln_f.weight", "ln_f.bias", "head.weight", "head.bias"} <= set(adam)
    reasons = {n: r for n, _, r in explain(TRANSFORMER)}
    assert reasons["tok_emb.weight"] == "embedding" and reasons["head.weight"] == "output head"
    assert reasons["blocks.0.ln1.weight"] == "gain" and reasons["blocks.0.mlp.fc.weight"] == "hidden matrix"


def test_every_parameter_appears_exactly_once_even_when_tied():
    for model in (MLP, CNN1D, CNN2D, TRANSFORMER):
        muon, adam = split(model)
        assert not set(muon) & set(adam)
        assert {id(p) for p in [*muon.values(), *adam.values()]} == {id(p) for p in model.parameters()}
    tied = build("transformer", DataSpec("tokens", (5,), 7, "lm", vocab_size=7), n_layer=1, d_model=16, n_head=2,
                 tie_embeddings=True)
    muon, adam = split(tied)
    assert "tok_emb.weight" in adam and "head.weight" not in adam and "head.weight" not in muon


def test_without_a_head_attribute_the_last_linear_is_the_head():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    muon, adam = names(model)
    assert muon == ["0.weight", "2.weight"] and "4.weight" in adam


def test_regex_override_sends_matching_names_to_adamw():
    muon, adam = names(TRANSFORMER, r"attn\.")
    assert muon == ["blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"]
    assert "blocks.0.attn.qkv.weight" in adam
    assert {n: r for n, _, r in explain(TRANSFORMER, r"attn\.")}["blocks.0.attn.qkv.weight"].startswith(
        "matches muon_exclude")


def test_function_override_with_none_keeping_the_default():
    def rule(name, p):
        if name == "head.weight":
            return True  # orthogonalise the head too
        if name == "body.fc0.weight":
            return False
        return None

    muon, adam = names(MLP, rule)
    assert muon == ["body.fc1.weight", "head.weight"]
    assert "body.fc0.weight" in adam
    with pytest.raises(ValueError, match="sends body.fc0.bias .* to Muon"):
        split(MLP, lambda name, p: True)


def test_frozen_parameters_are_left_out():
    model = build("mlp", DataSpec("vector", (10,), 3, "classification"), depth=2, width=8)
    model.body.fc0.weight.requires_grad_(False)
    muon, adam = split(model)
    assert "body.fc0.weight" not in muon and "body.fc0.weight" not in adam
    assert isinstance(next(iter(muon.values())), torch.nn.Parameter)
