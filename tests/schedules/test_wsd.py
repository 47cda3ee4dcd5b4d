"""wsd and infinite: closed-form values, endpoints, validation, agreement with pytorch_optimizer's WSD."""

import math
from itertools import pairwise

import pytest
import torch

from trainlab.config import ConfigError
from trainlab.schedules import build


def values(name, total, **opts):
    f = build(name, total, **opts)
    return [f(t) for t in range(total)]


@pytest.mark.parametrize("cooldown, at, expected", [("linear", 90, 0.5), ("cosine", 90, 0.5), ("1-sqrt", 85, 0.5),
                                                     ("1-sqrt", 96, 1 - math.sqrt(0.8))])
def test_wsd_closed_form(cooldown, at, expected):
    f = build("wsd", 100, warmup=10, decay_frac=0.2, cooldown=cooldown)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == 1.0  # (t + 1) / W
    assert f(10) == f(50) == f(79) == f(80) == 1.0  # stable until the cooldown's first step (q = 0)
    assert f(at) == pytest.approx(expected)


def test_wsd_last_step_and_final():
    assert build("wsd", 100, cooldown="linear")(99) == pytest.approx(1 / 20)  # q = 19/20 at t = T - 1
    f = build("wsd", 100, cooldown="linear", final=0.1)
    assert f(90) == pytest.approx(0.55) and f(99) == pytest.approx(0.1 + 0.9 / 20)
    assert build("wsd", 100, cooldown="1-sqrt")(99) == pytest.approx(1 - math.sqrt(19 / 20))
    assert values("wsd", 100, decay_frac=0.0) == [1.0] * 100  # no cooldown: constant


@pytest.mark.parametrize("cooldown", ["linear", "cosine", "1-sqrt"])
def test_wsd_is_monotone(cooldown):
    v = values("wsd", 200, warmup=20, cooldown=cooldown, final=0.05)
    assert all(a <= b for a, b in pairwise(v[:20]))
    assert all(a >= b for a, b in pairwise(v[19:]))
    assert min(v[20:]) >= 0.05


@pytest.mark.parametrize("overrides, key", [({"warmup": 100}, "schedule.warmup"),
                                            ({"warmup": 90}, "schedule.decay_frac"),  # cooldown starts at 80
                                            ({"decay_frac": 1.5}, "schedule.decay_frac"),
                                            ({"cooldown": "exp"}, "schedule.cooldown"),
                                            ({"final": -0.1}, "schedule.final")])
def test_wsd_validation(overrides, key):
    with pytest.raises(ConfigError) as err:
        build("wsd", 100, **overrides)
    assert err.value.key == key


@pytest.mark.parametrize("cooldown, final", [("linear", 0.0), ("cosine", 0.0), ("1-sqrt", 0.0), ("cosine", 0.1)])
def test_wsd_agrees_with_pytorch_optimizer_after_warmup(cooldown, final):
    from pytorch_optimizer.lr_scheduler.wsd import get_wsd_schedule

    total, warmup, decay = 120, 12, 24
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = get_wsd_schedule(opt, num_warmup_steps=warmup, num_stable_steps=total - warmup - decay,
                              num_decay_steps=decay, min_lr_ratio=final, cooldown_type=cooldown).lr_lambdas[0]
    ours = build("wsd", total, warmup=warmup, decay_frac=decay / total, cooldown=cooldown, final=final)
    for t in range(warmup, total):
        assert ours(t) == pytest.approx(theirs(t), abs=1e-12), t
    # Documented difference: their warm-up is t / W (step 0 at lr 0), ours (t + 1) / W.
    for t in range(warmup):
        assert theirs(t) == pytest.approx(t / warmup) and ours(t) == pytest.approx((t + 1) / warmup)


def test_infinite_closed_form():
    opts = {"warmup": 10, "cooldown_steps": 20, "constant": 0.5, "anneal_frac": 0.2, "final": 0.1}
    f = build("infinite", 100, **opts)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0
    assert f(10) == pytest.approx(1.0)  # cooldown starts at the peak
    assert f(20) == pytest.approx(0.75)  # half-way down the cosine from 1 to 0.5
    assert f(30) == f(55) == f(79) == f(80) == 0.5  # constant phase; anneal's first step has q = 0
    assert f(90) == pytest.approx(0.5 * 0.2 ** 0.5)  # exponential: c · (f / c) ** q
    assert f(99) == pytest.approx(0.5 * 0.2 ** (19 / 20))
    g = build("infinite", 100, anneal="linear", final=0.0, **{k: v for k, v in opts.items() if k != "final"})
    assert g(90) == pytest.approx(0.25) and g(99) == pytest.approx(0.5 / 20)
    h = build("infinite", 100, anneal="cosine", **opts)
    assert h(90) == pytest.approx(0.3)


def test_infinite_defaults_and_monotonicity():
    v = values("infinite", 100)  # 10% cooldown to 0.5, constant, 10% exponential anneal to 0.1
    assert v[0] == 1.0 and v[10] == v[89] == 0.5 and v[90] == 0.5
    assert v[99] == pytest.approx(0.5 * 0.2 ** 0.9)
    assert all(a >= b for a, b in pairwise(v))
    # The constant phase does not depend on the budget: a longer run is the same up to its own anneal.
    longer = values("infinite", 1000, cooldown_steps=10)
    assert longer[10:900] == [0.5] * 890


@pytest.mark.parametrize("overrides, key", [({"final": 0.6}, "schedule.final"),
                                            ({"final": 0.0}, "schedule.final"),  # exponential needs > 0
                                            ({"constant": 0.0}, "schedule.constant"),
                                            ({"cooldown_steps": 91}, "schedule.cooldown_steps"),
                                            ({"cooldown_frac": 0.95}, "schedule.cooldown_frac"),
                                            ({"warmup": 100}, "schedule.warmup")])
def test_infinite_validation(overrides, key):
    with pytest.raises(ConfigError) as err:
        build("infinite", 100, **overrides)
    assert err.value.key == key
