"""diffGrad: parity with pytorch_optimizer.DiffGrad, the friction really uses the previous gradient (the aliasing
bug of the first public version), foreach == reference, and the optimizer contract."""

import copy
import math

import pytest
import pytorch_optimizer
import torch

from trainlab import optim
from trainlab.optim.diffgrad import DiffGrad, friction
from optim_testing import feed_steps as steps, random_tensors

SHAPES = [(7,), (4, 5), (2, 3, 3), (1,)]


def tensors(dtype, seed, shapes=SHAPES):
    return random_tensors(dtype, seed, shapes)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_matches_pytorch_optimizer_diffgrad(dtype, tol, decoupled):
    ours, theirs = tensors(dtype, 0), tensors(dtype, 0)
    grads = [tensors(dtype, 100 + i) for i in range(50)]
    kw = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    steps(optim.build("diffgrad", ours, decoupled_weight_decay=decoupled, **kw), ours, grads)
    # Matching settings: their weight_decouple is our decoupled_weight_decay; rectify off (their default).
    # Their denominator is sqrt(v + 1e-15) + eps: a relative difference below 1e-12 here.
    steps(pytorch_optimizer.DiffGrad(theirs, weight_decouple=decoupled, rectify=False, ams_bound=False, **kw),
          theirs, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_friction_uses_the_true_previous_gradient_even_with_a_reused_grad_buffer():
    # The first public diffGrad stored previous_grad = grad, an alias of p.grad: once the gradient buffer was
    # reused in place (zero_grad(set_to_none=False) + backward), g_prev - g was 0 and xi always 0.5.
    p = torch.zeros(3, dtype=torch.float64)
    opt = DiffGrad([p], lr=1e-3)
    g1 = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    g2 = torch.tensor([-2.0, -1.0, 3.0], dtype=torch.float64)
    p.grad = g1.clone()
    opt.step()
    p.grad.copy_(g2)  # same tensor object, new values
    before = p.clone()
    opt.step()
    assert torch.equal(opt.state[p]["previous_grad"], g2)
    m = 0.1 * 0.9 * g1 + 0.1 * g2
    v = 0.001 * 0.999 * g1**2 + 0.001 * g2**2
    adam_step = 1e-3 * math.sqrt(1 - 0.999**2) / (1 - 0.9**2) * m / (v.sqrt() + 1e-8)
    xi = (before - p) / adam_step  # the friction the optimizer applied, per coordinate
    torch.testing.assert_close(xi, torch.sigmoid((g1 - g2).abs()))
    assert xi[0] > 0.9 and xi[2] > 0.9  # gradient changed: xi well above 0.5
    torch.testing.assert_close(xi[1], torch.tensor(0.5, dtype=torch.float64))  # unchanged coordinate
    assert torch.equal(friction(g1, g1), torch.full((3,), 0.5, dtype=torch.float64))


def test_first_step_uses_a_zero_previous_gradient():
    p = torch.zeros(2, dtype=torch.float64)
    opt = DiffGrad([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([2.0, -0.5], dtype=torch.float64)
    opt.step()  # Adam's first step is -lr*sign(g); times sigmoid(|g|)
    torch.testing.assert_close(p, -0.1 * torch.sign(p.grad) * torch.sigmoid(p.grad.abs()))


def test_coupled_decay_leaves_p_grad_untouched():
    p = torch.ones(3)
    opt = DiffGrad([p], weight_decay=0.5)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.grad, torch.ones(3))
    assert torch.equal(opt.state[p]["previous_grad"], torch.full((3,), 1.5))  # the L2 term is part of g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_foreach_equals_reference(dtype, decoupled):
    fast, ref = tensors(dtype, 1), tensors(dtype, 1)
    grads = [tensors(dtype, 200 + i) for i in range(20)]
    kw = {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": decoupled}
    steps(DiffGrad(fast, foreach=True, **kw), fast, grads)
    steps(DiffGrad(ref, foreach=False, **kw), ref, grads)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_round_trip_continues_identically():
    params = tensors(torch.float32, 2)
    grads = [tensors(torch.float32, 300 + i) for i in range(10)]
    opt = DiffGrad(params, lr=1e-2, weight_decay=0.1)
    steps(opt, params, grads[:5])
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(opt.state_dict())
    steps(opt, params, grads[5:])
    resumed = [p.clone() for p in saved_params]
    opt2 = DiffGrad(resumed)
    opt2.load_state_dict(saved_state)
    steps(opt2, resumed, grads[5:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


def test_param_groups_lr_changes_none_grads_and_zero_grad():
    a, b, frozen = torch.zeros(3), torch.zeros(3), torch.ones(3)
    opt = optim.build("diffgrad", [{"params": [a]}, {"params": [b, frozen], "lr": 0.0}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert (a < 0).all() and torch.equal(b, torch.zeros(3))
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state
    before = a.clone()
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert torch.equal(a, before)
    opt.zero_grad(set_to_none=True)
    assert a.grad is None and b.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_state_keeps_the_parameter_dtype(dtype):
    p = torch.randn(5, dtype=dtype)
    opt = DiffGrad([p], lr=1e-2, eps=1e-4)
    for _ in range(3):
        p.grad = torch.randn(5, dtype=dtype)
        opt.step()
    assert all(opt.state[p][k].dtype == dtype for k in ("exp_avg", "exp_avg_sq", "previous_grad"))
    assert torch.isfinite(p).all()


def test_registry_entry():
    entry = optim.OPTIMIZERS.get("diffgrad")
    assert entry.meta["own"] and entry.meta["source"] == "trainlab" and "Dubey et al. 2019" in entry.meta["paper"]
    opts = optim.resolve_options("diffgrad", {})
    assert (opts.lr, opts.betas, opts.eps, opts.weight_decay, opts.decoupled_weight_decay) == (
        1e-3, (0.9, 0.999), 1e-8, 0.0, False)
