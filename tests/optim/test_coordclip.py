"""Coordinate-wise clipping: the clamp, equality with clamp-then-base by hand, foreach == reference, and the
wrapper contract (shared with perpgrad: every base option kept, real state_dict, param_groups reach the base)."""

import copy

import pytest
import torch

from trainlab import optim
from trainlab.config import ConfigError
from trainlab.optim.coordclip import CoordClip, clip_coordinates_foreach, clip_coordinates_reference
from trainlab.optim.wrappers import GradientTransformWrapper
from trainlab.train.config import parse_overrides, resolve
from optim_testing import feed_steps as steps, random_tensors

SHAPES = [(7,), (4, 5), (2, 3, 3)]


def tensors(dtype, seed, scale=1.0):
    return random_tensors(dtype, seed, SHAPES, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_foreach_equals_reference_and_clamps_each_coordinate(dtype):
    a, b = tensors(dtype, 0, scale=3.0), tensors(dtype, 0, scale=3.0)
    original = [g.clone() for g in a]
    clip_coordinates_foreach(a, 0.5)
    clip_coordinates_reference(b, 0.5)
    for x, y, g in zip(a, b, original):
        assert torch.equal(x, y) and x.dtype == dtype
        assert torch.equal(x, g.clamp(-0.5, 0.5)) and (g.abs() > 0.5).any()


@pytest.mark.parametrize("base, base_kw, cls", [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}, torch.optim.SGD),
    ("adamw", {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 0.1}, torch.optim.AdamW),
])
def test_equals_clamp_then_base_by_hand(base, base_kw, cls):
    ours, by_hand = tensors(torch.float64, 1), tensors(torch.float64, 1)
    grads = [tensors(torch.float64, 100 + i, scale=2.0) for i in range(30)]
    steps(optim.build("coordclip", ours, base=base, threshold=0.7, **base_kw), ours, grads)
    # the registry builds torch's SGD/AdamW with fused=True on CPU (see trainlab.optim.registry._prefer_fused)
    steps(cls(by_hand, fused=True, **base_kw), by_hand, [[g.clamp(-0.7, 0.7) for g in gs] for gs in grads])
    for a, b in zip(ours, by_hand):
        assert torch.equal(a, b)


def test_every_base_option_reaches_the_base_and_threshold_is_validated():
    params = [torch.randn(3)]
    opt = optim.build("coordclip", params, base="sgd", threshold=0.3, lr=0.05, momentum=0.5, dampening=0.1,
                      nesterov=False, weight_decay=0.2)
    group = opt.optimizer.param_groups[0]
    assert opt.threshold == 0.3 and isinstance(opt.optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["dampening"], group["weight_decay"]) == (0.05, 0.5, 0.1, 0.2)
    assert type(optim.build("coordclip", params, base="lamb", clamp=10.0).optimizer).__name__ == "Lamb"
    with pytest.raises(ConfigError, match="optimizer.threshold"):
        optim.build("coordclip", params, threshold=0)
    with pytest.raises(ConfigError, match="optimizer.base"):
        optim.build("coordclip", params, base="autolrs")  # a wrapper the loop steers cannot be wrapped
    assert type(optim.build("coordclip", params, base="perpgrad").optimizer).__name__ == "PerpGrad"  # others can
    with pytest.raises(ValueError):
        CoordClip(params, threshold=-1.0)


def test_the_wrapper_plumbing_is_shared():
    assert issubclass(CoordClip, GradientTransformWrapper)
    assert issubclass(optim.OPTIMIZERS.get("perpgrad").factory, GradientTransformWrapper)
    own = set(vars(CoordClip))  # (torch's profiling hook re-sets `step` on each subclass; it wraps the shared one)
    assert not own & {"state_dict", "load_state_dict", "zero_grad", "param_groups", "state", "add_param_group"}


def test_param_groups_lr_changes_none_grads_and_zero_grad():
    a, b, frozen = torch.zeros(2), torch.zeros(2), torch.ones(2)
    opt = optim.build("coordclip", [{"params": [a]}, {"params": [b, frozen], "lr": 0.0}], lr=0.1, threshold=1.0)
    assert opt.param_groups is opt.optimizer.param_groups
    a.grad, b.grad = torch.tensor([5.0, -0.5]), torch.tensor([5.0, -0.5])
    opt.step()
    torch.testing.assert_close(a, torch.tensor([-0.1, 0.05]))
    assert torch.equal(a.grad, torch.tensor([1.0, -0.5]))  # clipped in place
    assert torch.equal(b, torch.zeros(2)) and torch.equal(frozen, torch.ones(2))
    opt.param_groups[0]["lr"] = 1.0
    a.grad = torch.tensor([5.0, 0.0])
    opt.step()
    torch.testing.assert_close(a, torch.tensor([-1.1, 0.05]))
    opt.zero_grad(set_to_none=True)
    assert a.grad is None and b.grad is None


def test_state_dict_round_trip_continues_identically():
    params = tensors(torch.float32, 2)
    grads = [tensors(torch.float32, 300 + i, scale=2.0) for i in range(10)]
    opt = optim.build("coordclip", params, base="sgd", lr=0.05, momentum=0.9, threshold=0.5)
    steps(opt, params, grads[:5])
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(opt.state_dict())
    assert all("momentum_buffer" in s for s in saved_state["state"].values())
    steps(opt, params, grads[5:])
    resumed = [p.clone() for p in saved_params]
    opt2 = optim.build("coordclip", resumed, base="sgd", lr=1.0, momentum=0.9, threshold=0.5)
    opt2.load_state_dict(saved_state)
    steps(opt2, resumed, grads[5:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


def test_config_path_and_registry_entry():
    cfg = resolve([parse_overrides(["optimizer=coordclip", "optimizer.threshold=0.1", "optimizer.lr=0.5",
                                    "optimizer.momentum=0.9"])])
    assert (cfg.optimizer.options.base, cfg.optimizer.options.threshold) == ("sgd", 0.1)
    assert (cfg.optimizer.options.lr, cfg.optimizer.options.momentum) == (0.5, 0.9)
    entry = optim.OPTIMIZERS.get("coordclip")
    assert entry.meta["wrapper"] and entry.meta["own"] and "Pan & Li 2023" in entry.meta["paper"]
