"""REX: closed form, endpoints, warm-up, and agreement with pytorch_optimizer's REXScheduler."""

from itertools import pairwise

import pytest
import torch

from trainlab.config import ConfigError
from trainlab.schedules import build


def test_rex_closed_form_and_endpoints():
    f = build("rex", 100)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5 / 0.75)  # p = 1/2: (1 - p) / (1 - p/2) = 2/3
    assert f(99) == pytest.approx(2 / 101)  # t = T - 1: 2 / (T + 1)
    g = build("rex", 100, final=0.1)
    assert g(50) == pytest.approx(0.1 + 0.9 * 2 / 3) and g(99) == pytest.approx(0.1 + 0.9 * 2 / 101)


def test_rex_warmup_then_decay_over_the_rest():
    f = build("rex", 110, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(10) == 1.0
    assert f(60) == pytest.approx(2 / 3)  # p = (60 - 10) / 100


def test_rex_is_decreasing_and_above_linear():
    v = [build("rex", 200)(t) for t in range(200)]
    assert all(a > b for a, b in pairwise(v))
    assert all(x >= 1 - t / 200 - 1e-12 for t, x in enumerate(v))


def test_rex_refuses_warmup_as_long_as_the_run():
    with pytest.raises(ConfigError, match="schedule.warmup"):
        build("rex", 50, warmup=50)


def test_rex_matches_pytorch_optimizer_except_at_step_0():
    from pytorch_optimizer.lr_scheduler.rex import REXScheduler

    total, base, final = 50, 0.5, 0.1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    theirs = REXScheduler(opt, total_steps=total, max_lr=base, min_lr=final * base)
    ours = build("rex", total, final=final)
    for t in range(total):
        lr = opt.param_groups[0]["lr"]  # what optimizer step t uses, stepping in the usual order
        # Documented difference: its step 0 runs at min_lr (its constructor writes min_lr and its counter is
        # already 1); from step 1 on the two agree exactly.
        assert lr == pytest.approx(final * base if t == 0 else base * ours(t), abs=1e-12), t
        theirs.step()
