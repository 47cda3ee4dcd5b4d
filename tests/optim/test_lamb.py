"""LAMB: parity with pytorch_optimizer.Lamb where the math agrees, its default differences, foreach == reference,
and the optimizer contract."""

import copy

import pytest
import pytorch_optimizer
import torch

from trainlab import optim
from trainlab.optim.lamb import Lamb
from optim_testing import feed_steps as steps, random_tensors

SHAPES = [(7,), (4, 5), (2, 3, 3)]


def tensors(dtype, seed, shapes=SHAPES, scale=1.0):
    return random_tensors(dtype, seed, shapes, scale)


def po_lamb(params, **kw):
    """pytorch_optimizer.Lamb with its documented differences switched to the reference semantics."""
    return pytorch_optimizer.Lamb(params, weight_decouple=False, adam_debias=True, pre_norm=False, adam=False,
                                  rectify=False, grad_averaging=True, **kw)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_matches_pytorch_optimizer_lamb_with_eps_zero(dtype, tol):
    # eps = 0 removes the one difference no flag switches off: their trust ratio is ||p|| / (||u|| + eps).
    # Their ||p|| clamp is 10 (a class attribute): clamp=10 here; one tensor is scaled past it.
    ours, theirs = tensors(dtype, 0, scale=3.0), tensors(dtype, 0, scale=3.0)
    assert max(torch.linalg.vector_norm(p) for p in ours) > 10
    grads = [tensors(dtype, 100 + i) for i in range(50)]
    kw = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 0.0, "weight_decay": 0.1}
    steps(optim.build("lamb", ours, bias_correction=False, clamp=10.0, **kw), ours, grads)
    steps(po_lamb(theirs, **kw), theirs, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_matches_pytorch_optimizer_lamb_up_to_the_trust_ratio_eps():
    ours, theirs = tensors(torch.float64, 1), tensors(torch.float64, 1)
    grads = [tensors(torch.float64, 200 + i) for i in range(50)]
    kw = {"lr": 1e-2, "eps": 1e-6, "weight_decay": 0.1}
    steps(Lamb(ours, bias_correction=False, clamp=10.0, **kw), ours, grads)
    steps(po_lamb(theirs, **kw), theirs, grads)
    # ||u|| is O(sqrt(numel)) here, so eps=1e-6 in their denominator changes each step by ~1e-7 relative.
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_documented_differences_of_pytorch_optimizer_defaults():
    grads = [tensors(torch.float64, 300 + i) for i in range(10)]

    # 1. Their default decouples weight decay, p *= 1 - lr*wd outside the trust ratio, and divides the step by
    #    1 - beta1^t after it; ours puts wd*p inside u. Same with wd=0 apart from the 1/(1 - beta1^t) factor.
    ours, theirs = tensors(torch.float64, 2), tensors(torch.float64, 2)
    steps(Lamb(ours, lr=1e-2, weight_decay=0.5, bias_correction=False, clamp=10.0), ours, grads)
    steps(pytorch_optimizer.Lamb(theirs, lr=1e-2, weight_decay=0.5), theirs, grads)
    assert max((a - b).abs().max() for a, b in zip(ours, theirs)) > 1e-3

    # 2. Emulating their default by hand: decoupled decay, then trust-ratio step of size lr / (1 - beta1^t).
    emulated = tensors(torch.float64, 2)
    opt = Lamb(emulated, lr=1e-2, bias_correction=False, clamp=10.0, eps=0.0)
    theirs = tensors(torch.float64, 2)
    ref = pytorch_optimizer.Lamb(theirs, lr=1e-2, weight_decay=0.5, eps=0.0)
    for t, step_grads in enumerate(grads, start=1):
        for p, g in zip(emulated, step_grads):
            p.mul_(1 - 1e-2 * 0.5)
            p.grad = g.clone()
        opt.param_groups[0]["lr"] = 1e-2 / (1 - 0.9**t)
        opt.step()
        for p, g in zip(theirs, step_grads):
            p.grad = g.clone()
        ref.step()
    for a, b in zip(emulated, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    # 3. Their ||p|| is clamped to 10 by default; ours is not unless clamp is set.
    big_ours, big_theirs = [torch.full((20,), 5.0, dtype=torch.float64)], [torch.full((20,), 5.0, dtype=torch.float64)]
    g = [[torch.linspace(-1, 1, 20, dtype=torch.float64)]]
    steps(Lamb(big_ours, lr=0.1, bias_correction=False, eps=0.0), big_ours, g)
    steps(po_lamb(big_theirs, lr=0.1, eps=0.0), big_theirs, g)
    moved_ours = torch.linalg.vector_norm(big_ours[0] - 5.0)
    moved_theirs = torch.linalg.vector_norm(big_theirs[0] - 5.0)
    torch.testing.assert_close(moved_ours, 0.1 * torch.linalg.vector_norm(torch.full((20,), 5.0, dtype=torch.float64)))
    torch.testing.assert_close(moved_theirs, torch.tensor(0.1 * 10.0, dtype=torch.float64))


def test_trust_ratio_sets_the_step_length_and_bias_correction_only_matters_with_weight_decay():
    p = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ||p|| = 5
    opt = Lamb([p], lr=0.1)
    p.grad = torch.tensor([1e-3, -2.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(torch.linalg.vector_norm(p - torch.tensor([3.0, 4.0], dtype=torch.float64)),
                               torch.tensor(0.5, dtype=torch.float64))
    grads = [tensors(torch.float64, 400 + i) for i in range(5)]
    for wd in (0.0, 0.1):
        a, b = tensors(torch.float64, 3), tensors(torch.float64, 3)
        steps(Lamb(a, lr=1e-2, eps=0.0, weight_decay=wd, bias_correction=True), a, grads)
        steps(Lamb(b, lr=1e-2, eps=0.0, weight_decay=wd, bias_correction=False), b, grads)
        gap = max((x - y).abs().max() for x, y in zip(a, b))
        # wd = 0: the trust ratio cancels the moments' scale (sqrt(1 - beta2^t) / (1 - beta1^t)) exactly
        assert gap < 1e-12 if wd == 0.0 else gap > 1e-4


def test_zero_weights_and_zero_updates_use_trust_one():
    p = torch.zeros(4)
    opt = Lamb([p], lr=0.1, eps=1e-6)
    p.grad = torch.ones(4)
    opt.step()  # ||p|| = 0: trust 1, plain Adam step of about lr
    torch.testing.assert_close(p, torch.full((4,), -0.1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias_correction, clamp", [(True, None), (False, 2.0)])
def test_foreach_equals_reference(dtype, bias_correction, clamp):
    fast, ref = tensors(dtype, 4), tensors(dtype, 4)
    grads = [tensors(dtype, 500 + i) for i in range(20)]
    kw = {"lr": 1e-2, "weight_decay": 0.1, "bias_correction": bias_correction, "clamp": clamp}
    steps(Lamb(fast, foreach=True, **kw), fast, grads)
    steps(Lamb(ref, foreach=False, **kw), ref, grads)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_mixed_dtypes_in_one_group():
    params = [torch.randn(3), torch.randn(4, dtype=torch.float64), torch.randn(2).bfloat16()]
    opt = Lamb(params, lr=1e-2)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert all(opt.state[p]["exp_avg_sq"].dtype == p.dtype and torch.isfinite(p).all() for p in params)


def test_state_dict_round_trip_continues_identically():
    params = tensors(torch.float32, 5)
    grads = [tensors(torch.float32, 600 + i) for i in range(10)]
    opt = Lamb(params, lr=1e-2, weight_decay=0.1)
    steps(opt, params, grads[:5])
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(opt.state_dict())
    steps(opt, params, grads[5:])
    resumed = [p.clone() for p in saved_params]
    opt2 = Lamb(resumed)
    opt2.load_state_dict(saved_state)
    steps(opt2, resumed, grads[5:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    assert opt2.state[resumed[0]]["step"] == 10


def test_param_groups_lr_changes_none_grads_and_zero_grad():
    a, b, frozen = torch.ones(3), torch.ones(3), torch.ones(3)
    opt = optim.build("lamb", [{"params": [a]}, {"params": [b, frozen], "lr": 0.0}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert (a < 1).all() and torch.equal(b, torch.ones(3))
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state
    before = a.clone()
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert torch.equal(a, before)
    opt.zero_grad(set_to_none=True)
    assert a.grad is None and b.grad is None


def test_registry_entry():
    entry = optim.OPTIMIZERS.get("lamb")
    assert entry.meta["own"] and entry.meta["source"] == "trainlab" and "You et al. 2020" in entry.meta["paper"]
    opts = optim.resolve_options("lamb", {"clamp": "none"})
    assert (opts.lr, opts.betas, opts.eps, opts.weight_decay, opts.bias_correction, opts.clamp) == (
        1e-3, (0.9, 0.999), 1e-6, 0.0, True, None)
    assert optim.resolve_options("lamb", {"clamp": "10"}).clamp == 10.0
