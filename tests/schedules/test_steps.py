"""step, multistep and two_regime: closed-form values, milestones as steps or fractions, validation."""

import pytest

from trainlab.config import ConfigError
from trainlab.schedules import build


def test_step_defaults_drop_twice():
    f = build("step", 100)  # step_size = ceil(100 / 3) = 34, gamma = 0.1
    assert f(0) == f(33) == 1.0
    assert f(34) == pytest.approx(0.1) and f(67) == pytest.approx(0.1)
    assert f(68) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)


def test_step_with_warmup_and_gamma():
    f = build("step", 100, step_size=10, gamma=0.5, warmup=5)
    assert f(0) == pytest.approx(0.2) and f(4) == 1.0 and f(9) == 1.0
    assert f(10) == 0.5 and f(25) == 0.25 and f(99) == 0.5 ** 9


def test_multistep_fractions_and_steps():
    f = build("multistep", 100)  # milestones 0.5, 0.75 of the steps
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)
    g = build("multistep", 100, milestones="30,60", gamma=0.5)  # as on the command line
    assert [g(t) for t in (0, 29, 30, 59, 60, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    h = build("multistep", 100, milestones=(1,))  # 1 is not < 1: step 1, not the end
    assert h(0) == 1.0 and h(1) == pytest.approx(0.1)
    assert [build("multistep", 10, milestones=())(t) for t in range(10)] == [1.0] * 10


@pytest.mark.parametrize("milestones", ["0.5,60", "60,30", "30,30", "100", "0.999"])
def test_multistep_refuses_bad_milestones(milestones):
    with pytest.raises(ConfigError) as err:
        build("multistep", 100, milestones=milestones)
    assert err.value.key == "schedule.milestones"


def test_two_regime_constant_and_decaying_second_phase():
    f = build("two_regime", 100)
    assert f(0) == f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(99) == pytest.approx(0.1)
    g = build("two_regime", 100, switch_frac=0.5, small=0.1, decay="linear", final=0.0)
    assert g(50) == pytest.approx(0.1) and g(75) == pytest.approx(0.05) and g(99) == pytest.approx(0.1 / 50)
    h = build("two_regime", 100, decay="cosine", final=0.02, warmup=10)
    assert h(0) == pytest.approx(0.1) and h(9) == 1.0 and h(75) == pytest.approx(0.06)


@pytest.mark.parametrize("overrides, key", [({"warmup": 60}, "schedule.switch_frac"),
                                            ({"decay": "linear", "final": 0.5}, "schedule.final"),
                                            ({"switch_frac": 1.2}, "schedule.switch_frac"),
                                            ({"small": 0.0}, "schedule.small")])
def test_two_regime_validation(overrides, key):
    with pytest.raises(ConfigError) as err:
        build("two_regime", 100, **overrides)
    assert err.value.key == key
