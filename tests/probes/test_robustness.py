"""The robustness probe (clean and PGD adversarial accuracy) against closed forms and through the trainer."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import trainlab
from trainlab.models.mlp import MLP
from trainlab.models.transformer import Transformer
from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext
from trainlab.probes.robustness import eps_key, robustness
from trainlab.train.config import ProbeOptions
from trainlab.workloads.registry import build


def ce(output: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(output, y, reduction="none")


def linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


def context(model: nn.Module, x_val: Tensor, y_val: Tensor, x_train: Tensor | None = None,
            y_train: Tensor | None = None, **options: Any) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=ce, x_train=x_val if x_train is None else x_train,
                        y_train=y_val if y_train is None else y_train, x_val=x_val, y_val=y_val, step=0, lr=0.1,
                        options=ProbeOptions(names=("robustness",), **options))


def probe(ctx: ProbeContext) -> dict[str, float]:
    return PROBES.get("robustness").factory(ctx)


def test_keys_and_the_clean_accuracy_by_hand() -> None:
    model = linear(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]), torch.zeros(3))
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [-1.0, -2.0]])
    y = torch.tensor([0, 1, 2, 2])
    # logits [2, 1, -3] -> 0 (right); [0, 3, -3] -> 1 (right); [1, 1, -2] -> not 2 (wrong); [-1, -2, 3] -> 2 (right)
    out = robustness(model, x, y, (0.05, 0.1, 0.2), loss_fn=ce)
    assert list(out) == ["clean_acc", "adv_acc_eps0.05", "adv_acc_eps0.1", "adv_acc_eps0.2"]
    assert out["clean_acc"] == 0.75
    assert eps_key(1e-5) == "adv_acc_eps1e-05" and eps_key(0.5) == "adv_acc_eps0.5"
    assert list(robustness(model, x, y, (), loss_fn=ce)) == ["clean_acc"]


def test_on_a_binary_linear_model_the_values_are_the_certified_accuracies() -> None:
    # two classes, logits Wx + b: the L∞ attack's optimum removes ε·‖w_y − w_other‖₁ from the margin, and PGD
    # with 2.5·ε/steps steps reaches it, so the value at each ε is exact -- and so non-increasing in ε
    g = torch.Generator().manual_seed(0)
    model = linear(torch.randn(2, 5, generator=g), 0.1 * torch.randn(2, generator=g))
    x, y = torch.randn(300, 5, generator=g), torch.randint(0, 2, (300,), generator=g)
    w, b = model.weight.detach(), model.bias.detach()
    margin = (x * (w[y] - w[1 - y])).sum(1) + b[y] - b[1 - y]
    slack = (w[1] - w[0]).abs().sum()
    eps = (0.05, 0.1, 0.2, 0.4)
    out = robustness(model, x, y, eps, loss_fn=ce)
    assert out["clean_acc"] == pytest.approx(float((margin > 0).float().mean()))
    values = [out[eps_key(e)] for e in eps]
    assert values == pytest.approx([float((margin - e * slack > 0).float().mean()) for e in eps])
    assert values == sorted(values, reverse=True) and values[-1] < values[0] < out["clean_acc"]


def trained_mlp() -> tuple[MLP, Tensor, Tensor]:
    """A small MLP fitted to two Gaussian blobs (full-batch Adam), and fresh validation points."""
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[-1.0, -1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])

    def sample(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, 2, (n,), generator=g)
        return centres[y] + 0.6 * torch.randn(n, 4, generator=g), y

    x, y = sample(200)
    torch.manual_seed(0)
    model = MLP(4, 2, depth=2, width=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        ce(model(x), y).mean().backward()
        opt.step()
    return model, *sample(100)


def test_on_a_trained_model_the_attack_lowers_the_accuracy() -> None:
    model, x, y = trained_mlp()
    out = robustness(model, x, y, (0.1, 0.5, 1.0), loss_fn=ce, restarts=2)
    assert out["clean_acc"] >= 0.9  # it learned the blobs
    for e in (0.1, 0.5, 1.0):
        assert out[eps_key(e)] <= out["clean_acc"]
    assert out[eps_key(1.0)] < out["clean_acc"] - 0.2  # at ε = 1 a blob's points reach the boundary x₁ + x₂ = 0


def test_the_probe_reads_the_validation_examples_and_leaves_the_model_and_rng_alone() -> None:
    model, x, y = trained_mlp()
    model.train()
    x_train, y_train = x[:10], 1 - y[:10]  # all wrong: a probe that read them would give 0
    ctx = context(model, x, y, x_train, y_train, robust_eps=(0.2, 0.6), robust_steps=5, robust_restarts=2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    rng = torch.get_rng_state()
    first = probe(ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(p.grad is not None and torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    assert probe(ctx) == first  # its starts come from probes.seed afresh: the same values at every call
    expected = robustness(model, x, y, (0.2, 0.6), loss_fn=ce, steps=5, restarts=2, seed=0)
    assert first == expected and first["clean_acc"] >= 0.9


def test_the_norm_option_reaches_the_attack() -> None:
    model, x, y = trained_mlp()
    linf = probe(context(model, x, y, robust_eps=(0.5,), robust_norm="linf"))
    l2 = probe(context(model, x, y, robust_eps=(0.5,), robust_norm="l2"))
    # the L2 ball of radius ε lies inside the L∞ ball of the same radius: a much weaker attack in 4 dimensions
    assert l2[eps_key(0.5)] > linf[eps_key(0.5)]
    assert l2 == robustness(model, x, y, (0.5,), loss_fn=ce, norm="l2")


def test_token_inputs_do_not_apply() -> None:
    data = build("modular", p=11).data("tokens")
    model = Transformer(12, 3, 11, lm=False, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(NotApplicable, match="real-valued inputs") as err:
        probe(context(model, data.x_val[:8], data.y_val[:8]))
    assert "\n" not in str(err.value)


def test_regression_does_not_apply() -> None:
    workload = build("teacher_student")
    data = workload.data("vector")
    model = MLP(data.x_train.shape[1], data.y_train.shape[1], depth=1, width=8)
    ctx = context(model, data.x_val[:8], data.y_val[:8])
    ctx.loss_fn = workload.loss
    with pytest.raises(NotApplicable, match="class label") as err:
        probe(ctx)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- trainer


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_through_the_trainer_the_rows_carry_the_probe(tmp_path: Path) -> None:
    # probes.examples above the 73 validation examples of p = 11: the probe reads all of them, so its clean
    # accuracy is the evaluator's val_acc of the same row
    run_dir = trainlab.run(None, ["workload.p=11", "steps=6", "eval_every=3", "probes=robustness",
                                  "probes.examples=1000", "probes.robust_eps=0.1,0.5", "probes.robust_steps=3"],
                           out=tmp_path / "r", quiet=True, report=False)
    probed = [r for r in rows(run_dir) if "robustness/clean_acc" in r]
    assert [r["step"] for r in probed] == [0, 3, 6]
    for r in probed:
        assert r["robustness/clean_acc"] == pytest.approx(r["val_acc"], abs=1e-6)
        for key in ("robustness/adv_acc_eps0.1", "robustness/adv_acc_eps0.5"):
            assert 0.0 <= r[key] <= 1.0
        assert "probe_seconds/robustness" in r
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "robustness" not in summary["probes"]["skipped"]


def test_through_the_trainer_a_transformer_skips_it_with_a_reason(tmp_path: Path) -> None:
    run_dir = trainlab.run(None, ["workload.p=11", "steps=2", "eval_every=2", "model=transformer", "model.d_model=16",
                                  "model.n_head=2", "model.n_layer=1", "probes=robustness", "probes.examples=16"],
                           out=tmp_path / "t", quiet=True, report=False)
    skipped = json.loads((run_dir / "summary.json").read_text())["probes"]["skipped"]
    assert "real-valued inputs" in skipped["robustness"]
    assert not any(k.startswith("robustness/") for r in rows(run_dir) for k in r)
