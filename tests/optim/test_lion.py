"""Lion: parity with lion-pytorch, foreach == reference, and the optimizer contract (groups, state, lr, dtypes)."""

import copy

import lion_pytorch
import pytest
import torch

from trainlab import optim
from trainlab.config import ConfigError
from trainlab.optim.lion import Lion
from optim_testing import feed_steps as steps, random_tensors

SHAPES = [(7,), (4, 5), (2, 3, 3), (1,)]


def tensors(dtype, seed, shapes=SHAPES):
    return random_tensors(dtype, seed, shapes)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_matches_lion_pytorch(dtype, tol):
    ours, theirs = tensors(dtype, 0), tensors(dtype, 0)
    grads = [tensors(dtype, 100 + i) for i in range(60)]
    steps(optim.build("lion", ours, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.5), ours, grads)
    steps(lion_pytorch.Lion(theirs, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.5), theirs, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_foreach_equals_reference(dtype):
    fast, ref = tensors(dtype, 1), tensors(dtype, 1)
    grads = [tensors(dtype, 200 + i) for i in range(20)]
    steps(Lion(fast, lr=1e-2, weight_decay=0.1, foreach=True), fast, grads)
    steps(Lion(ref, lr=1e-2, weight_decay=0.1, foreach=False), ref, grads)
    for a, b in zip(fast, ref):
        if dtype == torch.bfloat16:  # foreach kernels round bf16 intermediates differently: an ulp or a flipped sign
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
        else:
            assert torch.equal(a, b)


def test_update_is_a_sign_step_of_length_lr_and_decay_is_decoupled():
    p = torch.tensor([1.0, -2.0, 3.0])
    opt = Lion([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.tensor([0.3, -5.0, 0.0])
    opt.step()  # m = 0: sign(0.1 * g); p * (1 - 0.05) first
    torch.testing.assert_close(p, torch.tensor([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 3.0 * 0.95]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.3, -5.0, 0.0]) * 0.01)


def test_state_dict_round_trip_continues_identically():
    params = tensors(torch.float32, 2)
    grads = [tensors(torch.float32, 300 + i) for i in range(10)]
    opt = Lion(params, lr=1e-2, weight_decay=0.1)
    steps(opt, params, grads[:5])
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(opt.state_dict())
    steps(opt, params, grads[5:])
    resumed = [p.clone() for p in saved_params]
    opt2 = Lion(resumed, lr=1.0)  # hyperparameters come back from the state dict
    opt2.load_state_dict(saved_state)
    assert opt2.param_groups[0]["lr"] == 1e-2
    steps(opt2, resumed, grads[5:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


def test_param_groups_lr_changes_none_grads_and_zero_grad():
    a, b, frozen = torch.zeros(3), torch.zeros(3), torch.ones(3)
    opt = optim.build("lion", [{"params": [a]}, {"params": [b, frozen], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert torch.allclose(a, torch.full((3,), -0.1)) and torch.allclose(b, torch.full((3,), -0.5))
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state
    opt.param_groups[0]["lr"] = 0.01  # what the trainer does before every step
    opt.step()
    assert torch.allclose(a, torch.full((3,), -0.11))
    opt.zero_grad(set_to_none=True)
    assert a.grad is None and b.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_state_keeps_the_parameter_dtype(dtype):
    p = torch.randn(5, dtype=dtype)
    opt = Lion([p], lr=1e-2)
    p.grad = torch.randn(5, dtype=dtype)
    opt.step()
    assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == dtype and torch.isfinite(p).all()


def test_registry_entry_and_validation():
    entry = optim.OPTIMIZERS.get("lion")
    assert entry.meta["own"] and entry.meta["source"] == "trainlab" and "Chen" in entry.meta["paper"]
    opts = optim.resolve_options("lion", {})
    assert (opts.lr, opts.betas, opts.weight_decay) == (1e-4, (0.9, 0.99), 0.0)
    with pytest.raises(ConfigError, match="optimizer.betas"):
        optim.resolve_options("lion", {"betas": "0.9,1.5"})
    with pytest.raises(ConfigError, match="optimizer.eps"):
        optim.resolve_options("lion", {"eps": 1e-8})


def test_minimises_a_quadratic():
    x = torch.full((10,), 3.0)
    opt = Lion([x], lr=0.05)
    for _ in range(200):
        x.grad = 2 * x
        opt.step()
    assert x.abs().max() < 0.1
