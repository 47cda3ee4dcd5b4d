"""Grokfast-EMA: parity with pytorch_optimizer's gradfilter_ema before the same base, the paper's formula by hand,
foreach == reference, exact resume (the EMA is in the base's per-parameter state), option checks, and nesting over
another wrapper (⊥AdamW) through the registry and the command line."""

import copy
import io

import numpy as np
import pytest
import torch
from pytorch_optimizer.optimizer.grokfast import gradfilter_ema
from torch import nn

from trainlab import optim
from trainlab.config import ConfigError
from trainlab.optim.grokfast import STATE_KEY, Grokfast, amplify_slow_foreach, amplify_slow_reference
from trainlab.optim.perpgrad import PerpGrad
from trainlab.train.config import parse_overrides, resolve
from optim_testing import feed_steps, random_tensors

STEPS = 20

# Registry optimizers that take plain parameters, as bases of grokfast (the EMA sits in their per-parameter state).
PLAIN = [e.name for e in optim.OPTIMIZERS if not (e.meta.get("wrapper") or e.meta.get("needs_model"))]
NOT_HERE = {
    "grokfastadamw": "has grokfast_alpha/grokfast_lamb options of its own: refused as a base (see the nesting test)",
    "spectralsphere": "takes 2-D parameters only; Net has biases",
}


class Net(nn.Module):
    """A small MLP plus a branch used only on even steps (its parameters have no gradient on odd ones)."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        self.branch = nn.Linear(5, 3, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        self.to(dtype)

    def forward(self, x, step):
        return self.body(x) + (self.branch(x) if step % 2 == 0 else 0)


def batches(dtype, n=STEPS):
    """A different batch every step, so that the gradients vary (and the EMA differs from each of them)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 5, generator=g, dtype=torch.float64).to(dtype),
             torch.randn(16, 3, generator=g, dtype=torch.float64).to(dtype)) for _ in range(n)]


def train(model, opt, data, filter_=None, start=0):
    """zero_grad / backward / [filter] / step over ``data``; ``filter_`` is pytorch_optimizer's gradfilter_ema."""
    grads = None
    for i, (x, y) in enumerate(data, start):
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x, i), y).backward()
        if filter_ is not None:
            grads = filter_(model, grads=grads, alpha=0.9, lamb=1.5)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("foreach", [None, False, True])  # None: by registry name (foreach by device)
@pytest.mark.parametrize("base, base_kw, cls", [
    ("adamw", {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 0.1}, torch.optim.AdamW),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}, torch.optim.SGD),
])
def test_equals_pytorch_optimizer_gradfilter_ema_then_the_same_base(dtype, foreach, base, base_kw, cls):
    """Exactly equal, not to a tolerance: the same elementwise ops in the same order (lerp_ with weight 1 - alpha,
    then add_ with alpha=lamb; the first EMA a copy of the gradient), so the same roundings, and then the same
    base kernel (the registry builds torch's AdamW/SGD fused on CPU: _prefer_fused)."""
    ours_model, theirs_model = Net(dtype), Net(dtype)
    data = batches(dtype)
    opt = (optim.build("grokfast", ours_model, base=base, grokfast_alpha=0.9, grokfast_lamb=1.5, **base_kw)
           if foreach is None else
           Grokfast(ours_model.parameters(), base=base, grokfast_alpha=0.9, grokfast_lamb=1.5, foreach=foreach,
                    **base_kw))
    ours = train(ours_model, opt, data)
    theirs = train(theirs_model, cls(theirs_model.parameters(), fused=True, **base_kw), data, gradfilter_ema)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    emas = [opt.state[p][STATE_KEY] for p in ours_model.parameters()]
    assert all(e.dtype == dtype for e in emas) and not torch.equal(emas[0], torch.zeros_like(emas[0]))


def test_the_paper_formula_by_hand_over_plain_sgd():
    """ema <- alpha ema + (1 - alpha) g (ema_1 = g_1), g <- g + lamb ema, w <- w - lr g: in float64, to 1e-13 (the
    formula as written rounds differently from lerp: three roundings instead of one)."""
    alpha, lamb, lr = 0.98, 2.0, 0.1
    params = random_tensors(torch.float64, 0, [(4, 3), (5,)])
    expected = [p.clone() for p in params]
    grads = [random_tensors(torch.float64, 10 + i, [(4, 3), (5,)]) for i in range(STEPS)]
    feed_steps(optim.build("grokfast", params, base="sgd", lr=lr), params, grads)  # defaults: the paper's
    emas = [None, None]
    for gs in grads:
        for i, g in enumerate(gs):
            emas[i] = g.clone() if emas[i] is None else alpha * emas[i] + (1 - alpha) * g
            expected[i] = expected[i] - lr * (g + lamb * emas[i])
    for a, b in zip(params, expected):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_foreach_equals_reference(dtype):
    shapes = [(7,), (4, 5), (2, 3, 3)]
    for fresh in ([True, False, False], [False, True, True]):
        ga, gb = random_tensors(dtype, 0, shapes), random_tensors(dtype, 0, shapes)
        ea, eb = random_tensors(dtype, 1, shapes), random_tensors(dtype, 1, shapes)
        amplify_slow_foreach(ga, ea, fresh, 0.9, 2.0)
        amplify_slow_reference(gb, eb, fresh, 0.9, 2.0)
        for x, y in zip(ga + ea, gb + eb):
            assert torch.equal(x, y) and x.dtype == dtype


@pytest.mark.parametrize("base", ["adamw", "perpgrad"])
def test_resume_from_state_dict_is_bit_identical(base):
    """N steps, state_dict through torch.save / torch.load(weights_only=True) as the trainer's checkpoints, a fresh
    optimizer (built with another lr: the saved groups win) loads it and continues = the uninterrupted run."""
    data = batches(torch.float32)
    model = Net(torch.float32)
    opt = optim.build("grokfast", model, base=base, lr=1e-2, weight_decay=0.0)
    train(model, opt, data[:8])
    saved_model, state = copy.deepcopy(model.state_dict()), opt.state_dict()
    assert all(STATE_KEY in s and {"exp_avg", "exp_avg_sq"} <= set(s) for s in state["state"].values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    uninterrupted = train(model, opt, data[8:], start=8)

    resumed_model = Net(torch.float32)
    resumed_model.load_state_dict(saved_model)
    opt2 = optim.build("grokfast", resumed_model, base=base, lr=1.0, weight_decay=0.0)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 1e-2
    resumed = train(resumed_model, opt2, data[8:], start=8)
    for a, b in zip(uninterrupted, resumed):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(opt.state[p][STATE_KEY], opt2.state[q][STATE_KEY])


def test_a_parameter_first_seen_later_gets_its_ema_after_the_base_initialised_its_state():
    """AdamW initialises a parameter's state when it finds it empty: the EMA must not be there before."""
    a, b = torch.ones(3), torch.ones(2)
    opt = optim.build("grokfast", [a, b], lr=0.1)
    a.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    assert set(opt.state[a]) == {"step", "exp_avg", "exp_avg_sq", STATE_KEY} and b not in opt.state
    torch.testing.assert_close(a.grad, torch.tensor([3.0, -6.0, 1.5]))  # (1 + lamb) g at the first step
    a.grad, b.grad = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 2.0])
    opt.step()
    assert set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq", STATE_KEY}
    assert float(opt.state[a]["step"]) == 2 and float(opt.state[b]["step"]) == 1


@pytest.mark.parametrize("options, key", [
    ({"grokfast_alpha": 1.0}, "grokfast_alpha"), ({"grokfast_alpha": -0.1}, "grokfast_alpha"),
    ({"grokfast_alpha": 1.5}, "grokfast_alpha"), ({"grokfast_lamb": -1.0}, "grokfast_lamb"),
])
def test_bad_options_are_refused(options, key):
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        Grokfast([torch.zeros(2)], **options)
    with pytest.raises(ConfigError, match=f"optimizer.{key}") as err:  # ConfigError is a ValueError
        optim.build("grokfast", [torch.zeros(2)], **options)
    assert isinstance(err.value, ValueError)
    optim.build("grokfast", [torch.zeros(2)], grokfast_alpha=0.0, grokfast_lamb=0.0)  # the bounds themselves


def test_over_perp_adamw_equals_the_filter_then_perpgrad():
    """Nesting through the registry: grokfast with base=perpgrad is Grokfast over ⊥Grad over AdamW (perpgrad's
    default base), exactly the filter followed by perpgrad's own step."""
    kw = {"lr": 1e-2, "weight_decay": 0.0}
    ours_model, theirs_model = Net(torch.float32), Net(torch.float32)
    data = batches(torch.float32)
    opt = optim.build("grokfast", ours_model, base="perpgrad", grokfast_alpha=0.9, grokfast_lamb=1.5, **kw)
    assert isinstance(opt.optimizer, PerpGrad) and isinstance(opt.optimizer.optimizer, torch.optim.AdamW)
    assert opt.param_groups is opt.optimizer.optimizer.param_groups
    ours = train(ours_model, opt, data)
    theirs = train(theirs_model, optim.build("perpgrad", theirs_model, base="adamw", **kw), data, gradfilter_ema)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    by_class = Grokfast(Net(torch.float32).parameters(), base=PerpGrad, **kw)  # a class base: perpgrad's default
    assert isinstance(by_class.optimizer.optimizer, torch.optim.AdamW)


def test_nesting_from_the_command_line_and_what_cannot_be_nested():
    cfg = resolve([parse_overrides(["optimizer=grokfast", "optimizer.base=perpgrad", "optimizer.lr=1e-2",
                                    "optimizer.weight_decay=0", "optimizer.grokfast_lamb=5"])])
    options = cfg.optimizer.options
    assert (options.base, options.grokfast_alpha, options.grokfast_lamb) == ("perpgrad", 0.98, 5.0)
    assert (options.compile_projection, options.lr, options.weight_decay) == (False, 1e-2, 0.0)  # perpgrad's, adamw's
    opt = optim.build("grokfast", nn.Linear(3, 2), **cfg.optimizer.kwargs())
    assert type(opt.optimizer.optimizer) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.lamb == 5.0

    cfg = resolve([parse_overrides(["optimizer=grokfast", "optimizer.base=perpgrad:lion", "optimizer.lr=1e-4"])])
    assert cfg.optimizer.options.base == "perpgrad:lion"
    opt = optim.build("grokfast", nn.Linear(3, 2), **cfg.optimizer.kwargs())
    assert type(opt.optimizer).__name__ == "PerpGrad" and type(opt.optimizer.optimizer).__name__ == "Lion"
    with pytest.raises(ConfigError, match="optimizer.betas"):  # perpgrad:sgd has no betas
        optim.build("grokfast", [torch.zeros(2)], base="perpgrad:sgd", betas=(0.9, 0.99))
    assert type(optim.build("perpgrad", [torch.zeros(2)], base="grokfast:sgd").optimizer.optimizer).__name__ == "SGD"

    for base, words in [("autolrs", "observe_loss"), ("ogd", "needs the model"), ("adamw:lion", "not a wrapper"),
                        ("perpgrad:nope", "unknown optimizer"), ("grokfastadamw", "grokfast_alpha"),
                        ("grokfast", "grokfast_alpha")]:
        with pytest.raises(ConfigError, match=words) as err:
            optim.build("grokfast", [torch.zeros(2)], base=base)
        assert err.value.key == "optimizer.base"


def test_registry_entry_and_wrapper_contract():
    entry = optim.OPTIMIZERS.get("grokfast")
    assert entry.meta["wrapper"] and entry.meta["own"] and entry.meta["tensor_lr"]
    assert "Lee et al. 2024" in entry.meta["paper"] and "2405.20233" in entry.meta["paper"]
    params = [torch.zeros(2)]
    opt = optim.build("grokfast", params, base="rmsprop", alpha=0.9, lr=1e-3)  # RMSprop's alpha is not ours
    assert opt.param_groups[0]["alpha"] == 0.9 and opt.alpha == 0.98
    assert opt.state_dict() == opt.optimizer.state_dict()
    opt.zero_grad()
    params[0].grad = torch.ones(2)
    opt.step()
    assert torch.equal(params[0].grad, torch.full((2,), 3.0))  # modified in place


def _seeded_build(name, model, **hparams):
    torch.manual_seed(0)  # a few optimizers draw random numbers (Kron), from torch's or numpy's global RNG
    np.random.seed(0)
    opt = optim.build(name, model, **hparams)
    getattr(opt, "train", lambda: None)()  # schedule-free: train mode, as the trainer sets it
    return opt


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PLAIN if n not in NOT_HERE])
def test_over_every_plain_registry_optimizer(name):
    """No base is disturbed by the EMA in its per-parameter state (e.g. one that initialised its state only when it
    found it empty, and had not yet at its first step): the same weights as gradfilter_ema + that optimizer, bit for
    bit, over 4 steps; and 4 more steps after a state round trip equal 4 more uninterrupted ones."""
    data = batches(torch.float32, 8)
    model, theirs_model = Net(torch.float32), Net(torch.float32)
    opt = _seeded_build("grokfast", model, base=name)
    ours = train(model, opt, data[:4])
    theirs_opt = _seeded_build(name, theirs_model)
    grads = None
    for i, (x, y) in enumerate(data[:4]):
        theirs_opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(theirs_model(x, i), y).backward()
        grads = gradfilter_ema(theirs_model, grads=grads)  # the paper's defaults, as grokfast's
        theirs_opt.step()
    for a, b in zip(ours, [p.detach().clone() for p in theirs_model.parameters()]):
        assert torch.equal(a, b)

    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    torch.manual_seed(1)
    np.random.seed(1)
    uninterrupted = train(model, opt, data[4:], start=4)
    resumed_model = Net(torch.float32)
    opt2 = _seeded_build("grokfast", resumed_model, base=name)
    resumed_model.load_state_dict(saved_model)
    opt2.load_state_dict(saved)
    torch.manual_seed(1)
    np.random.seed(1)
    for a, b in zip(uninterrupted, train(resumed_model, opt2, data[4:], start=4)):
        assert torch.equal(a, b)


def test_the_table_of_bases_left_out_names_registered_entries():
    assert set(NOT_HERE) <= set(PLAIN)
