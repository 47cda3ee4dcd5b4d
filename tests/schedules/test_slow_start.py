"""slow_start_fast_decay (Jeddi et al. 2020): values at hand-picked steps, the default warm-up, validation."""

from itertools import pairwise

import pytest

from trainlab.config import ConfigError
from trainlab.schedules import build


def test_values_at_hand_picked_steps():
    f = build("slow_start_fast_decay", 110, warmup=10, final=0.01)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5)  # (t + 1) / W: the slow start
    assert f(9) == 1.0 and f(10) == 1.0  # the peak: last warm-up step and first decay step
    assert f(60) == pytest.approx(0.1)  # q = 50/100: 0.01 ** 0.5
    assert f(35) == pytest.approx(0.01 ** 0.25)  # q = 1/4
    assert f(109) == pytest.approx(0.01 ** 0.99)  # the last step, just above final


def test_default_warm_up_is_a_tenth_of_the_run():
    f = build("slow_start_fast_decay", 200)  # W = 20, final = 0.01
    assert f(0) == pytest.approx(1 / 20) and f(19) == 1.0
    assert f(110) == pytest.approx(0.1)  # q = 90/180
    assert build("slow_start_fast_decay", 4)(0) == 1.0  # round(0.4) -> at least one warm-up step
    assert build("slow_start_fast_decay", 1)(0) == 1.0  # a one-step run has no room for a warm-up


def test_decay_is_faster_than_linear_and_ends_near_final():
    v = [build("slow_start_fast_decay", 100, warmup=0)(t) for t in range(100)]
    assert v[0] == 1.0 and all(a > b for a, b in pairwise(v))
    # below linear decay until the last few steps, where linear reaches 0 and this one its floor
    assert all(x <= 1 - t / 100 + 1e-12 for t, x in enumerate(v[:98]))
    assert v[-1] == pytest.approx(0.01 ** 0.99)


def test_final_one_is_constant_after_the_warm_up():
    f = build("slow_start_fast_decay", 50, warmup=5, final=1.0)
    assert [f(t) for t in range(5, 50)] == [1.0] * 45


@pytest.mark.parametrize("options, key", [
    ({"warmup": 50}, "schedule.warmup"),
    ({"final": 0.0}, "schedule.final"),
    ({"final": 1.5}, "schedule.final"),
])
def test_validation(options, key):
    with pytest.raises(ConfigError) as err:
        build("slow_start_fast_decay", 50, **options)
    assert err.value.key == key
