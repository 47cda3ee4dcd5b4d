"""Target setting from a fixture of target-setting records (no training): the worst of the seeds' best values by
default, the median on request, caps for saturating metrics, and refusals."""

import pytest
from bench_testing import TINY_PARITY

from trainlab.bench.targets import summarise, target_value


def rows(best, times=None):
    times = times or [2.0] * len(best)
    return [{"seed": 1000 + i, "baseline": {"lr": 0.01}, "score": {"best": b, "train_time": t, "status": "completed"}}
            for i, (b, t) in enumerate(zip(best, times))]


def test_the_target_is_the_worst_seed_by_default_and_the_median_on_request():
    accs = [0.97, 0.91, 0.95, 0.99, 0.93]  # higher is better: worst = lowest
    assert target_value(accs, higher_is_better=True) == 0.91
    assert target_value(accs, higher_is_better=True, quantile="median") == 0.95
    losses = [1.2, 1.5, 1.1, 1.3, 1.4]  # lower is better: worst = highest
    assert target_value(losses, higher_is_better=False) == 1.5
    with pytest.raises(ValueError, match="allowed: worst, median"):
        target_value(accs, True, quantile="best")


def test_an_entry_records_its_rule_caps_saturating_targets_and_budgets_from_the_median_time():
    entry = summarise(TINY_PARITY, "base", rows([0.97, 0.91, 0.95, 0.99, 0.93], [2.0, 3.0, 4.0, 5.0, 6.0]))
    assert entry["target"] == 0.91 and entry["quantile"] == "worst" and len(entry["seeds"]) == 5
    assert entry["time_budget"] == round(4 / 3 * 4.0 * 2.0, 1)  # 4/3 x median time x the shared-machine slack
    capped = summarise(TINY_PARITY.__class__(**{**TINY_PARITY.__dict__, "target_cap": 0.9}), "base",
                       rows([0.97, 0.91, 0.95]))
    assert capped["target"] == 0.9  # the worst (0.91) capped at 0.9
    assert summarise(TINY_PARITY, "base", rows([0.97, 0.91, 0.95]), "median")["target"] == 0.95


def test_a_seed_without_a_value_means_the_baseline_fails_and_no_worst_target_is_set():
    with pytest.raises(RuntimeError, match="1 target-setting run"):
        summarise(TINY_PARITY, "base", rows([0.97, None, 0.95]))
    assert summarise(TINY_PARITY, "base", rows([0.97, None, 0.95]), "median")["target"] == 0.96


def test_every_small_suite_target_was_set_with_a_point_the_baseline_tries():
    """Issue 12: targets set outside the baseline's search space (weight decay 1 with betas it cannot search, an
    lr at the space's edge) were rarely reachable by its own tuning. Each workload's target-setting configuration
    must be one of the nadamw baseline's points."""
    from trainlab.bench.submission import parse
    from trainlab.bench.suite import SUITES, WORKLOADS

    points = parse("nadamw").search_space
    assert isinstance(points, tuple) and len(points) == 5
    for name in SUITES["small"]:
        baseline = WORKLOADS.get(name).factory().baseline
        assert set(baseline) <= {"lr", "weight_decay"}, name  # nothing the baseline's points cannot set
        assert {f"optimizer.{k}": v for k, v in baseline.items()} in [dict(p) for p in points], name
