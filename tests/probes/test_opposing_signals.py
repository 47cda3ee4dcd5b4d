"""The opposing-signals probe on the paper's mechanism (two groups sharing a strong feature with opposite labels),
a control without them, and through the registry."""

import json
import math
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.models.mlp import MLP
from trainlab.models.transformer import Transformer
from trainlab.probes.opposing_signals import opposing_signals
from trainlab.probes.registry import PROBES, ProbeContext
from trainlab.train.config import ProbeOptions

N, GROUP, D, STRENGTH = 200, 10, 12, 10.0
A = range(N, N + GROUP)  # the outliers labelled 0
B = range(N + GROUP, N + 2 * GROUP)  # the outliers labelled 1


def ce(output: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(output, y, reduction="none")


def dataset(seed: int, outliers: bool) -> tuple[Tensor, Tensor]:
    """N ordinary examples (4 classes by the signs of features 1 and 2; feature 0 off) and two groups of GROUP
    outliers sharing a strong feature 0 = STRENGTH, labelled 0 (A) and 1 (B), otherwise near 0 -- nothing else tells
    them apart. The control (``outliers=False``) has the same points with feature 0 off."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    x[:, 0] = 0
    y = (x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long()
    xo = 0.1 * torch.randn(2 * GROUP, D, generator=g)
    xo[:, 0] = STRENGTH if outliers else 0.0
    yo = torch.cat([torch.zeros(GROUP), torch.ones(GROUP)]).long()
    return torch.cat([x, xo]), torch.cat([y, yo])


def balanced_model(seed: int) -> MLP:
    """A one-hidden-layer ReLU MLP whose unit 0 reads only feature 0 and votes almost evenly for classes 0 and 1
    (0.55 vs 0.45): the narrow valley where the opposing groups balance, slightly tilted towards A."""
    torch.manual_seed(seed)
    model = MLP(D, 4, depth=1, width=16)
    fc0 = cast(nn.Linear, model.body.fc0)
    with torch.no_grad():
        fc0.weight[0] = 0
        fc0.weight[0, 0] = 1.0
        fc0.weight[1:, 0] = 0  # the other units ignore feature 0
        fc0.bias[0] = 0
        model.head.weight[:, 0] = torch.tensor([0.55, 0.45, -0.5, -0.5])
    return model


@pytest.mark.parametrize("seed", range(4))
def test_opposing_groups_top_the_list_move_in_antiphase_and_pull_apart(seed: int) -> None:
    model = balanced_model(seed)
    x, y = dataset(seed, outliers=True)
    r = opposing_signals(model, ce, x, y, lr=0.5, fraction=0.1)
    k = math.ceil(0.1 * len(y))
    assert len(r.top) == k == 22
    assert set(A) | set(B) <= set(r.top.tolist())  # all 20 outliers are among the 22 top changers
    # antiphase: the step tilts the shared feature's vote towards B -- every A loss rises, every B loss falls
    assert (r.deltas[list(A)] > 0).all() and (r.deltas[list(B)] < 0).all()
    assert r.up >= GROUP and r.down >= GROUP and r.up + r.down == k
    assert r.cosine < -0.98  # both groups' gradients are the shared feature's, with opposite signs
    assert r.share > 0.4  # 10% of the examples carry most of the change
    assert r.deltas.mean() < 0  # and still the batch loss falls
    assert r.scalars()["cosine"] == r.cosine and r.scalars()["k"] == 22.0


def test_successive_real_steps_oscillate_between_the_groups() -> None:
    # The paper's picture: each step overshoots the balance, so the groups' losses alternate out of phase.
    model = balanced_model(0)
    x, y = dataset(0, outliers=True)
    signs = []
    for _ in range(3):
        r = opposing_signals(model, ce, x, y, lr=0.5)
        a, b = r.deltas[list(A)].mean(), r.deltas[list(B)].mean()
        assert a * b < 0 and r.cosine < -0.98
        signs.append(bool(a > 0))
        grads = torch.autograd.grad(ce(model(x), y).mean(), list(model.parameters()))
        with torch.no_grad():  # the SGD step the probe imagined, taken for real
            for p, g in zip(model.parameters(), grads):
                p.sub_(0.5 * g)
    assert signs == [True, False, True]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lr", [0.5, 4.0])
def test_control_without_the_shared_feature_has_no_opposing_pair(seed: int, lr: float) -> None:
    model = balanced_model(seed)
    x, y = dataset(seed, outliers=False)
    r = opposing_signals(model, ce, x, y, lr=lr, fraction=0.1)
    assert not set(A) & set(r.top.tolist()) and not set(B) & set(r.top.tolist())  # the quiet points stay quiet
    # the examples the step moves most all go down, or the few going up are no mirror image of the rest
    assert r.up <= 3
    assert (r.up == 0 and math.isnan(r.cosine)) or r.cosine > -0.5
    assert r.share < 0.4


def test_definitions_on_a_linear_model_by_hand() -> None:
    # f(x) = w x (one weight), squared loss per example: Δ_i and the group gradients in closed form
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[1.0], [2.0], [-1.0], [3.0]])
    y = torch.tensor([[2.0], [0.0], [-1.0], [3.0]])

    def sq(out: Tensor, target: Tensor) -> Tensor:
        return (out - target).pow(2).squeeze(1)

    # ℓ_i = (w x_i − y_i)², ∇ℓ_i = 2 x_i (w x_i − y_i) = [−2, 8, 0, 0]; g = mean = 1.5; w' = 1 − 0.1·1.5 = 0.85
    r = opposing_signals(model, sq, x, y, lr=0.1, fraction=0.5)
    w = 0.85
    expected = torch.tensor([(w - 2) ** 2 - 1, (2 * w) ** 2 - 4, (-w + 1) ** 2 - 0, (3 * w - 3) ** 2 - 0],
                            dtype=torch.float64)
    torch.testing.assert_close(r.deltas, expected, rtol=1e-6, atol=1e-6)
    assert r.top.tolist() == [1, 0]  # |Δ| = 1.11, 0.3225, 0.0225, 0.2025
    assert (r.up, r.down) == (1, 1)
    assert r.cosine == pytest.approx(-1.0)  # 1-D gradients −2 (example 0, up) and 8 (example 1, down)
    assert r.share == pytest.approx((1.11 + 0.3225) / (1.11 + 0.3225 + 0.0225 + 0.2025), rel=1e-5)


def test_bad_arguments() -> None:
    model = nn.Linear(2, 2)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="lr > 0"):
        opposing_signals(model, ce, x, y, lr=0.0)
    with pytest.raises(ValueError, match="fraction"):
        opposing_signals(model, ce, x, y, lr=0.1, fraction=0.0)


def context(model: nn.Module, x: Tensor, y: Tensor, run_dir: Any = None, step: int = 7, lr: float = 0.5,
            x_all: Tensor | None = None, y_all: Tensor | None = None, **options: Any) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=ce, x_train=x, y_train=y, x_val=x, y_val=y, step=step, lr=lr,
                        options=ProbeOptions(names=("opposing_signals",), **options), run_dir=run_dir,
                        x_train_all=x_all, y_train_all=y_all)


def probe(ctx: ProbeContext) -> dict[str, float]:
    return PROBES.get("opposing_signals").factory(ctx)


def test_registry_run_writes_the_top_examples_and_touches_nothing(tmp_path: Path) -> None:
    model = balanced_model(1)
    model.train()
    fc0 = cast(nn.Linear, model.body.fc0)
    fc0.weight.grad = torch.full_like(fc0.weight, 3.0)  # a stale .grad must survive
    x_all, y_all = dataset(1, outliers=True)
    # the probe subset the prober draws: randperm(n_train) under probes.seed, first probes.examples
    idx = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))[:150]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    out = probe(context(model, x_all[idx], y_all[idx], tmp_path, x_all=x_all, y_all=y_all, seed=0,
                        opposing_signals_fraction=0.1))
    assert set(out) == {"k", "up", "down", "share", "mean_delta", "cosine"}
    assert out["k"] == 15 and out["cosine"] < -0.98
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fc0.weight.grad is not None and torch.equal(fc0.weight.grad, torch.full_like(fc0.weight, 3.0))
    assert model.head.weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng) and model.training and all(m.training for m in model.modules())
    saved = json.loads((tmp_path / "opposing_signals" / "step_7.json").read_text())
    assert saved["step"] == 7 and saved["lr"] == 0.5 and len(saved["index"]) == 15
    assert saved["train_index"] == idx[saved["index"]].tolist()  # recovered and verified
    outliers = [i for i in saved["train_index"] if i >= N]
    assert len(outliers) == sum(1 for i in idx.tolist() if i >= N)  # every outlier in the subset is listed
    assert [abs(d) for d in saved["delta"]] == sorted((abs(d) for d in saved["delta"]), reverse=True)
    assert not list((tmp_path / "opposing_signals").glob(".*.tmp"))  # atomic: no temporary file left
    # a subset the prober's draw does not explain gets no training-set indices (never wrong ones)
    probe(context(model, x_all[:150], y_all[:150], tmp_path, step=8, x_all=x_all, y_all=y_all))
    assert json.loads((tmp_path / "opposing_signals" / "step_8.json").read_text())["train_index"] is None


def test_registry_lr_option_and_a_zero_lr() -> None:
    model = balanced_model(0)
    x, y = dataset(0, outliers=True)
    own = probe(context(model, x, y, lr=0.0, opposing_signals_lr=0.5))  # the option overrides the trainer's lr
    assert own["cosine"] == pytest.approx(opposing_signals(model, ce, x, y, lr=0.5).cosine)
    assert probe(context(model, x, y, lr=0.0)) == {}  # warmup at lr 0: nothing this call, the probe stays


def test_sequence_losses_are_averaged_per_example() -> None:
    model = Transformer(7, 5, 7, lm=True, n_layer=1, n_head=2, d_model=16)
    x = torch.randint(0, 7, (12, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 7, (12, 5), generator=torch.Generator().manual_seed(1))

    def seq_ce(out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out.transpose(1, 2), target, reduction="none")  # (N, T)

    r = opposing_signals(model, seq_ce, x, y, lr=0.1, fraction=0.25)
    torch.testing.assert_close(r.losses, seq_ce(model.eval()(x), y).mean(dim=1).double(), rtol=1e-5, atol=1e-6)
    assert len(r.top) == 3 and r.deltas.shape == (12,)


def test_no_state_between_calls_so_resume_gives_the_same_values(tmp_path: Path) -> None:
    import trainlab

    args = ["workload.p=11", "steps=8", "eval_every=2", "probes=opposing_signals", "probes.examples=32"]
    full = trainlab.run(None, args, out=tmp_path / "full", quiet=True, report=False)
    trainlab.run(None, [*args[:1], "steps=4", *args[2:]], out=tmp_path / "part", quiet=True, report=False)
    resumed = trainlab.run(None, ["steps=8"], resume=tmp_path / "part", quiet=True, report=False)

    def values(run_dir: Path) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("opposing_signals/")} | {"step": r["step"]}
                for r in rows if "opposing_signals/k" in r]

    assert [r["step"] for r in values(full)] == [0, 2, 4, 6, 8]
    assert values(full) == values(resumed)
    for step in (6, 8):
        assert (json.loads((full / "opposing_signals" / f"step_{step}.json").read_text())
                == json.loads((resumed / "opposing_signals" / f"step_{step}.json").read_text()))
