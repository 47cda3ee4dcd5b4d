"""``prune.method=ipr`` (Doshi et al. 2024): the first hidden layer's units of lowest Fourier IPR go, with their bias
and BatchNorm entries, on the usual schedule; the masks hold through training; other models are refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from resume_testing import run_quietly  # type: ignore[import-not-found]  # tests/ is on pytest's path
from trainlab.config import ConfigError
from trainlab.models.mlp import MLP
from trainlab.probes.ipr import neuron_ipr
from trainlab.prune.layers import prunable_layers
from trainlab.prune.masks import ipr_unit_masks
from trainlab.prune.pruner import Pruner, Schedule
from trainlab.rundir import checkpoints
from trainlab.train import loop
from trainlab.train.config import from_cli
from trainlab.train.load import build_model

P = 11
MODULAR = [f"workload.p={P}", "model=mlp", "model.width=16", "eval_every=3"]


def block(kind: str, p: int = P) -> Tensor:
    a = torch.arange(p, dtype=torch.float32)
    if kind == "delta":
        return F.one_hot(torch.tensor(3), p).float()  # IPR 1/p
    if kind == "two":
        return torch.cos(2 * math.pi * a / p) + torch.cos(2 * math.pi * 4 * a / p)  # 1/4
    return torch.cos(2 * math.pi * 2 * a / p + 0.4)  # "cos": 1/2


# six units, IPR by construction (mean of the a and b blocks): 1/2, 1/11, 3/8, 1/4, (1/2 + 1/11)/2, 1/11
UNITS = [("cos", "cos"), ("delta", "delta"), ("cos", "two"), ("two", "two"), ("cos", "delta"), ("delta", "delta")]


def hand_weight() -> Tensor:
    return torch.stack([torch.cat([block(a), block(b)]) for a, b in UNITS])


def test_the_hand_built_units_have_the_intended_iprs() -> None:
    assert neuron_ipr(hand_weight(), P).tolist() == pytest.approx(
        [0.5, 1 / P, 3 / 8, 1 / 4, (0.5 + 1 / P) / 2, 1 / P], abs=1e-6)


@pytest.mark.parametrize("fraction,pruned", [(0.0, set()), (2 / 6, {1, 5}), (0.5, {1, 3, 5}),
                                             (4 / 6, {1, 3, 4, 5})])
def test_the_lowest_ipr_units_are_pruned(fraction: float, pruned: set[int]) -> None:
    keep = ipr_unit_masks({"w": hand_weight()}, fraction, P)["w"]
    assert {i for i in range(6) if not keep[i]} == pruned


def test_scale_does_not_protect_a_memorising_unit() -> None:
    weight = hand_weight()
    weight[1] *= 100.0  # the largest norm by far (neurons would keep it); still a delta, IPR 1/p
    keep = ipr_unit_masks({"w": weight}, 2 / 6, P)["w"]
    assert not keep[1] and not keep[5] and int(keep.sum()) == 4


def test_pruned_units_stay_pruned_and_count() -> None:
    before = torch.tensor([True, True, True, True, True, False])  # unit 5 already pruned: counts in the fraction
    keep = ipr_unit_masks({"w": hand_weight()}, 0.5, P, keep={"w": before})["w"]
    assert {i for i in range(6) if not keep[i]} == {5, 1, 3}
    keep = ipr_unit_masks({"w": hand_weight()}, 0.0, P, keep={"w": before})["w"]
    assert not keep[5] and int(keep.sum()) == 5


def test_the_pruner_masks_rows_bias_and_batchnorm_of_the_first_layer_only() -> None:
    model = MLP(2 * P, P, depth=2, width=6, batchnorm=True)
    with torch.no_grad():
        model.get_parameter("body.fc0.weight").copy_(hand_weight())
    first = [layer for layer in prunable_layers(model) if layer.module == "body.fc0"]
    pruner = Pruner(model, first, "ipr", Schedule(0.5, 0, 0, 1), ipr_p=P)
    assert sorted(pruner.masks) == ["body.bn0.bias", "body.bn0.weight", "body.fc0.bias", "body.fc0.weight"]
    pruner.prune_to(0.5)
    pruner.apply_()
    gone = torch.tensor([i in {1, 3, 5} for i in range(6)])
    assert torch.equal(pruner.masks["body.fc0.weight"], ~gone.unsqueeze(1).expand(6, 2 * P))
    for name in ("body.fc0.bias", "body.bn0.weight", "body.bn0.bias"):
        assert torch.equal(pruner.masks[name], ~gone)
    assert bool((model.get_parameter("body.fc0.weight")[gone] == 0).all())
    assert bool((model.get_parameter("body.bn0.bias")[gone] == 0).all())
    assert pruner.fraction() == pruner.unit_sparsity() == 0.5 and pruner.counts["body.fc0.weight"][2:] == (3, 6)
    model.eval()
    hidden = model.body[:3](torch.randn(4, 2 * P))  # fc0 -> bn0 -> act0: the pruned units output exactly 0
    assert bool((hidden[:, gone] == 0).all()) and bool((hidden[:, ~gone] != 0).any())


def test_one_shot_at_step_0_prunes_the_lowest_ipr_units_of_the_initialisation(tmp_path: Path) -> None:
    overrides = [*MODULAR, "steps=3", "prune=ipr", "prune.sparsity=0.25", "prune.end=0"]  # one-shot at build time
    run = run_quietly(tmp_path / "run", overrides)
    initial = build_model(from_cli(None, overrides), torch.device("cpu")).get_parameter("body.fc0.weight")  # seeded: the same init
    masks = checkpoints.load(run / "checkpoints")["prune"]["masks"]
    gone = ~masks["body.fc0.weight"].any(dim=1)
    assert set(torch.argsort(neuron_ipr(initial, P))[:4].tolist()) == set(torch.nonzero(gone).flatten().tolist())
    assert sorted(masks) == ["body.fc0.bias", "body.fc0.weight"]  # fc1 (it reads hidden units) is not ranked


def test_masks_hold_through_the_steps_on_the_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = loop.train_step

    def step(t: Any, s: Any) -> Tensor:
        before = {name: mask.clone() for name, mask in t.pruner.masks.items()}
        loss = real(t, s)
        params, masks = t.pruner.params, t.pruner.masks
        seen.append({"step": s.step, "units": t.pruner.unit_sparsity(),
                     "nonzero_pruned": sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items()),
                     "revived": sum(int((m & ~before[n]).sum()) for n, m in masks.items())})
        return loss

    monkeypatch.setattr(loop, "train_step", step)
    run = run_quietly(tmp_path / "run", [*MODULAR, "steps=8", "optimizer.weight_decay=1.0", "prune=ipr",
                                         "prune.sparsity=0.5", "prune.start=2", "prune.end=6", "prune.every=2"])
    assert [r["step"] for r in seen] == list(range(1, 9))
    assert all(r["nonzero_pruned"] == 0 and r["revived"] == 0 for r in seen)
    # Zhu & Gupta: 0 at step 2, 0.5 (1 - (1/2)^3) = 0.4375 -> round(7) units at 4, 0.5 -> 8 units at 6
    assert [r["units"] for r in seen] == [0, 0, 0, 7 / 16, 7 / 16, 0.5, 0.5, 0.5]
    payload = checkpoints.load(run / "checkpoints")
    masks, weights = payload["prune"]["masks"], payload["model"]
    assert int((~masks["body.fc0.weight"].any(dim=1)).sum()) == 8
    assert all(bool((weights[n][~m] == 0).all()) for n, m in masks.items())


def refusal(overrides: list[str], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        run_quietly(tmp_path / "run", overrides)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
    return info.value


@pytest.mark.parametrize("overrides,key,says", [
    (["workload=mnist1d", "model=mlp", "model.width=8"], "prune.method", "not model=mlp on workload=mnist1d"),
    ([f"workload.p={P}", "model=transformer", "model.d_model=16", "model.n_head=2", "model.n_layer=1"],
     "prune.method", "not model=transformer on workload=modular"),
    ([*MODULAR, "prune.scope=global"], "prune.scope", "one layer"),
    ([*MODULAR, "model.depth=0"], "prune.method", "no Linear or convolution weights"),
])
def test_refusals_are_one_line(overrides: list[str], key: str, says: str, tmp_path: Path) -> None:
    err = refusal([*overrides, "steps=2", "prune=ipr", "prune.sparsity=0.5"], tmp_path)
    assert err.key == key and says in str(err), str(err)
