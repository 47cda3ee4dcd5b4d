"""Every registered schedule: builds with defaults, documented, warm-up convention, bounds, monotone decay."""

import dataclasses
from itertools import pairwise

import pytest

from trainlab.config import ConfigError
from trainlab.schedules import SCHEDULES, build, names

NEEDS_A_RUN = {"refined"}
OURS = {"wsd", "infinite", "rex", "step", "multistep", "two_regime", "refined", "slow_start_fast_decay"}
BUILDABLE = [n for n in names() if n not in NEEDS_A_RUN]
# schedules whose defaults warm up because the warm-up is the method (the fine-tuning schedule's slow start)
WARMS_UP = {n for n in BUILDABLE if SCHEDULES.get(n).meta.get("warms_up")}
WITH_WARMUP = [n for n in BUILDABLE if "warmup" in {f.name for f in dataclasses.fields(SCHEDULES.get(n).options)}]


def test_the_new_schedules_are_registered():
    assert OURS <= set(names())


@pytest.mark.parametrize("name", BUILDABLE)
def test_builds_with_defaults_and_stays_in_range(name):
    f = build(name, 100)
    v = [f(t) for t in range(100)]
    assert all(0.0 <= x <= 1.0 for x in v), name
    peak = v.index(max(v)) if name in WARMS_UP else 0
    assert all(a < b for a, b in pairwise(v[:peak + 1])), "a default warm-up rises to the peak"
    assert all(a >= b - 1e-12 for a, b in pairwise(v[peak:])), "after it (or without one) the defaults never increase"


@pytest.mark.parametrize("name", names())
def test_documented(name):
    entry = SCHEDULES.get(name)
    assert entry.summary, name
    if name in OURS:  # paper, formula, units and defaults
        assert len((entry.factory.__doc__ or "").splitlines()) >= 5 and "efault" in entry.factory.__doc__, name
    for field in dataclasses.fields(entry.options):
        assert field.metadata.get("help"), f"{name}.{field.name}"


@pytest.mark.parametrize("name", WITH_WARMUP)
def test_warmup_convention(name):
    f = build(name, 100, warmup=10)
    assert [f(t) for t in range(10)] == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert f(10) <= 1.0
    with pytest.raises(ConfigError) as err:
        build(name, 100, warmup=100)
    assert err.value.key == "schedule.warmup"


def test_unknown_option_is_refused_with_the_dotted_key():
    with pytest.raises(ConfigError) as err:
        build("wsd", 100, decay=0.2)
    assert err.value.key == "schedule.decay"
