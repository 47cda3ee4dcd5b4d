"""Masks computed by trainlab.prune equal torch.nn.utils.prune's on the same tensors, and hand-computed ones.

torch.nn.utils.prune is the reference: ``l1_unstructured`` per tensor (``scope=layer``), ``global_unstructured``
with ``L1Unstructured`` (``scope=global``), ``ln_structured(dim=0)`` with n = 2 or 1 (``neurons`` per layer).
Global structured pruning has no torch counterpart; it is checked by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from trainlab.prune.layers import prunable_layers
from trainlab.prune.masks import magnitude_masks, unit_masks
from trainlab.prune.pruner import Pruner

# 0.5 of 5 entries is 2.5: both sides must round it the same way (to 2); 0.3 of 5 is 1.5 (to 2)
FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99)


def modules() -> dict[str, nn.Linear | nn.Conv1d | nn.Conv2d]:
    torch.manual_seed(0)  # continuous random weights: no ties, so the choice among equals never matters
    return {"fc": nn.Linear(7, 5), "conv1": nn.Conv1d(3, 6, 5), "conv2": nn.Conv2d(2, 8, 3), "small": nn.Linear(1, 5)}


def mask_of(module: nn.Module) -> torch.Tensor:
    """The ``weight_mask`` buffer torch.nn.utils.prune left on ``module``."""
    mask = module.get_buffer("weight_mask")
    return mask.bool()


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_layer_scope_equals_l1_unstructured(fraction: float) -> None:
    mods = modules()
    mine = magnitude_masks({name: m.weight for name, m in mods.items()}, fraction, "layer")
    for name, m in mods.items():
        ref = copy.deepcopy(m)
        prune.l1_unstructured(ref, "weight", amount=fraction)
        assert torch.equal(mine[name], mask_of(ref)), name
        assert int((~mine[name]).sum()) == round(fraction * m.weight.numel())


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_global_scope_equals_global_unstructured(fraction: float) -> None:
    mods = modules()
    mine = magnitude_masks({name: m.weight for name, m in mods.items()}, fraction, "global")
    refs = {name: copy.deepcopy(m) for name, m in mods.items()}
    prune.global_unstructured([(m, "weight") for m in refs.values()], pruning_method=prune.L1Unstructured,
                              amount=fraction)
    for name, ref in refs.items():
        assert torch.equal(mine[name], mask_of(ref)), name
    total = sum(m.weight.numel() for m in mods.values())
    assert sum(int((~mask).sum()) for mask in mine.values()) == round(fraction * total)


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("norm,n", [("l2", 2), ("l1", 1)])
def test_layer_units_equal_ln_structured(fraction: float, norm: str, n: int) -> None:
    mods = modules()
    mine = unit_masks({name: m.weight for name, m in mods.items()}, fraction, "layer", "l2" if norm == "l2" else "l1")
    for name, m in mods.items():
        ref = copy.deepcopy(m)
        prune.ln_structured(ref, "weight", amount=fraction, n=n, dim=0)
        rows = mask_of(ref).reshape(m.weight.shape[0], -1)
        assert bool((rows == rows[:, :1]).all())  # whole rows: one decision per unit
        assert torch.equal(mine[name], rows[:, 0]), name


def test_magnitude_by_hand() -> None:
    a = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    b = torch.tensor([-0.7, 4.0, 0.1, -2.5])
    layer = magnitude_masks({"a": a, "b": b}, 0.5, "layer")
    assert layer["a"].tolist() == [[True, False], [False, True]]  # |-1| and |0.5| are the two smallest of a
    assert layer["b"].tolist() == [False, True, False, True]  # |-0.7| and |0.1| of b
    # global, 3 of 8: 0.1, 0.5, 0.7 are the smallest of both together
    glob = magnitude_masks({"a": a, "b": b}, 3 / 8, "global")
    assert glob["a"].tolist() == [[True, True], [False, True]]
    assert glob["b"].tolist() == [False, True, False, True]


def test_global_units_by_hand() -> None:
    # row L2 norms: a: 5, 1, 13; b: 2, 0.5, 3, 4  -> the 3 smallest of all 7 are 0.5 (b1), 1 (a1), 2 (b0)
    a = torch.tensor([[3.0, 4.0], [0.6, 0.8], [5.0, 12.0]])
    b = torch.tensor([[[2.0, 0.0]], [[0.0, -0.5]], [[3.0, 0.0]], [[0.0, 4.0]]])
    units = unit_masks({"a": a, "b": b}, 3 / 7, "global", "l2")
    assert units["a"].tolist() == [True, False, True]
    assert units["b"].tolist() == [False, False, True, True]
    # L1 norms: a: 7, 1.4, 17; b: 2, 0.5, 3, 4 -> the 2 smallest are b1, a1
    units = unit_masks({"a": a, "b": b}, 2 / 7, "global", "l1")
    assert units["a"].tolist() == [True, False, True]
    assert units["b"].tolist() == [True, False, True, True]


def test_pruned_entries_stay_pruned_and_count() -> None:
    w = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    keep = torch.tensor([False, True, True, True, True])  # the largest is already pruned
    # 0.4 of 5 = 2: the already pruned 5.0 counts as one of them, then the smallest live one, 1.0
    assert magnitude_masks({"w": w}, 0.4, "layer", {"w": keep})["w"].tolist() == [False, True, True, True, False]
    # a target below the current sparsity keeps the mask (never revives)
    assert magnitude_masks({"w": w}, 0.0, "layer", {"w": keep})["w"].tolist() == keep.tolist()
    rows = torch.tensor([[9.0], [1.0], [2.0]])
    assert unit_masks({"r": rows}, 0.0, "layer", "l2", {"r": torch.tensor([False, True, True])})["r"].tolist() == \
        [False, True, True]


def test_prunable_layers_skip_the_head_and_take_bias_and_batchnorm_of_a_unit() -> None:
    from trainlab.models.mlp import MLP

    model = MLP(6, 3, depth=2, width=4, batchnorm=True)
    layers = prunable_layers(model)
    assert [layer.weight for layer in layers] == ["body.fc0.weight", "body.fc1.weight"]  # not head.weight
    assert layers[0].companions == ("body.fc0.bias", "body.bn0.weight", "body.bn0.bias")


@pytest.mark.parametrize("train", [True, False])
def test_a_pruned_unit_outputs_exactly_zero(train: bool) -> None:
    """Structured pruning removes the unit: its weights, bias and BatchNorm entries are masked, so its activation is
    0 for every input, in training (batch statistics) and evaluation (running statistics) alike."""
    from trainlab.models.mlp import MLP

    torch.manual_seed(1)
    model = MLP(6, 3, depth=2, width=8, batchnorm=True)
    model(torch.randn(32, 6))  # running statistics away from their initial values
    with torch.no_grad():
        for bn in (model.get_submodule("body.bn0"), model.get_submodule("body.bn1")):
            bn.get_parameter("weight").uniform_(0.5, 1.5)
            bn.get_parameter("bias").uniform_(0.5, 1.5)  # a unit whose bias entries were left would output relu(beta)
    pruner = Pruner(model, prunable_layers(model), "neurons", None)
    pruner.prune_to(0.5)
    pruner.apply_()
    seen: dict[str, torch.Tensor] = {}
    model.get_submodule("body.act0").register_forward_hook(lambda m, i, o: seen.update(act0=o))
    model.get_submodule("body.act1").register_forward_hook(lambda m, i, o: seen.update(act1=o))
    model.train(train)
    model(torch.randn(16, 6))
    for layer, act in (("body.fc0.weight", "act0"), ("body.fc1.weight", "act1")):
        pruned_units = ~pruner.unit_keep()[layer]
        assert int(pruned_units.sum()) == 4
        assert bool((seen[act][:, pruned_units] == 0).all())
        assert bool((seen[act][:, ~pruned_units] != 0).any())
    assert pruner.unit_sparsity() == 0.5
    assert pruner.sparsity() == 0.5  # whole rows: the same fraction of the weights
