"""A 0-dim tensor learning rate: the same steps as the float it holds, refused where it cannot work, and no
recompilation of a compiled step when a schedule changes it in place."""

import pytest
import torch
from torch import nn

from trainlab import optim
from trainlab.config import ConfigError
from trainlab.optim import AutoLRS, CoordClip, Lion, PerpGrad

# (name, options, the learning-rate options given as tensors)
CASES = [
    ("lion", {}, ("lr",)),
    ("lion", {"foreach": True}, ("lr",)),
    ("lamb", {}, ("lr",)),
    ("lamb", {"foreach": True}, ("lr",)),
    ("diffgrad", {"decoupled_weight_decay": True, "weight_decay": 0.1}, ("lr",)),
    ("diffgrad", {"foreach": True}, ("lr",)),
    ("muon", {"weight_decay": 0.1}, ("lr", "adam_lr")),
    ("dualized", {"weight_decay": 0.1}, ("lr",)),
    ("perpgrad", {"base": "lion"}, ("lr",)),
    ("coordclip", {"threshold": 0.05, "momentum": 0.9}, ("lr",)),
    ("grokfast", {"base": "perpgrad"}, ("lr",)),
    ("adamw", {}, ("lr",)),
    ("sgd", {"momentum": 0.9}, ("lr",)),
]


def train(name, options, lrs, tensor):
    """Four steps from one seed; after two, every group's lr is set to 5e-3 (a tensor in place, as torch's
    LRScheduler does: groups share the tensor given, as with torch.optim)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    values = {key: torch.tensor(1e-2, dtype=torch.float64) if tensor else 1e-2 for key in lrs}
    opt = optim.build(name, model, **options, **values)
    for step in range(4):
        if step == 2:
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(5e-3)
                else:
                    group["lr"] = 5e-3
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name, options, lrs", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_a_tensor_lr_steps_as_the_float_it_holds(name, options, lrs):
    _, expected = train(name, options, lrs, tensor=False)
    opt, got = train(name, options, lrs, tensor=True)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # still the caller's tensor, not a copy as a float
    if "initial_lr" in opt.param_groups[0]:  # Muon, Dualized: the schedule's base value did not move with it
        assert opt.param_groups[0]["initial_lr"] == 1e-2


@pytest.mark.parametrize("name, hparams, words", [
    ("lion", {"lr": torch.tensor([1e-3])}, "0-dim"),
    ("lion", {"lr": torch.tensor(-1e-3)}, "must be >= 0"),
    ("autolrs", {"lr": torch.tensor(1e-3)}, "autolrs takes a float"),
    ("perpgrad", {"base": "adan", "lr": torch.tensor(1e-3)}, "adan takes a float"),  # the base decides
])
def test_tensor_lrs_are_checked(name, hparams, words):
    with pytest.raises(ConfigError, match=words) as err:
        optim.build(name, [torch.zeros(3, requires_grad=True)], **hparams)
    assert err.value.key == "optimizer.lr"


def test_autolrs_refuses_a_tensor_lr_it_would_overwrite():
    with pytest.raises(ValueError, match="sets the learning rate itself"):
        AutoLRS([torch.zeros(3, requires_grad=True)], lr=torch.tensor(1e-3))


def test_wrappers_take_an_optimizer_class_as_base():
    results = []
    for base in (torch.optim.SGD, "sgd"):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        opt = CoordClip(model.parameters(), base=base, threshold=0.1, lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(5, 4)).square().mean().backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])
    opt = PerpGrad(nn.Linear(4, 2).parameters(), base=torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95))
    assert type(opt.optimizer) is torch.optim.AdamW and opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert "base='AdamW'" in repr(opt)
    assert type(AutoLRS(nn.Linear(4, 2).parameters(), base=torch.optim.Adam).optimizer) is torch.optim.Adam


@pytest.mark.slow
def test_compiled_lion_step_is_not_recompiled_when_a_schedule_fills_the_lr():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = nn.Linear(4, 3), torch.randn(8, 4)
    opt = Lion(model.parameters(), lr=torch.tensor(1e-3), weight_decay=0.1)

    def gradients():
        opt.zero_grad()
        model(x).square().mean().backward()

    gradients()
    opt.step()  # eagerly: the first step creates the state, a different path through step() than every later one
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    for lr in (1e-3, 5e-4, 2e-4, 1e-4):
        opt.param_groups[0]["lr"].fill_(lr)
        before = model.weight.detach().clone()
        gradients()
        step()
        moved = (model.weight.detach() - before * (1 - lr * 0.1)).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, lr))  # Lion moves every coordinate by lr
    assert counter.frame_count == 1
