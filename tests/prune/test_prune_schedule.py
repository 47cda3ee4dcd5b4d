"""Zhu & Gupta's gradual schedule s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at hand-picked steps."""

from __future__ import annotations

import pytest

from trainlab.prune.schedule import is_pruning_step, pruning_steps, target_sparsity


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (99, 0.0), (100, 0.0),  # before and at t0: s_i
    (200, 0.8 * (1 - (3 / 4) ** 3)),  # a quarter of the way: 0.8 * 37/64 = 0.4625
    (300, 0.7),  # half way: 0.8 * (1 - 1/8)
    (400, 0.8 * (1 - (1 / 4) ** 3)),  # 0.8 * 63/64 = 0.7875
    (500, 0.8), (10_000, 0.8),  # at and after the end: s_f
])
def test_cubic_from_zero(step: int, expected: float) -> None:
    assert target_sparsity(step, 0.0, 0.8, 100, 500) == pytest.approx(expected, abs=1e-12)


def test_cubic_from_an_inherited_sparsity() -> None:
    # s_i = 0.5, s_f = 0.9 over [0, 10]: at t = 5, 0.9 - 0.4 / 8 = 0.85
    assert target_sparsity(5, 0.5, 0.9, 0, 10) == pytest.approx(0.85)
    assert target_sparsity(0, 0.5, 0.9, 0, 10) == 0.5


def test_one_shot() -> None:
    assert target_sparsity(299, 0.0, 0.6, 300, 300) == 0.0
    assert target_sparsity(300, 0.0, 0.6, 300, 300) == 0.6
    assert pruning_steps(300, 300, 100) == [300]


def test_pruning_steps() -> None:
    assert pruning_steps(100, 500, 100) == [100, 200, 300, 400, 500]
    assert pruning_steps(100, 500, 150) == [100, 250, 400, 500]  # the end is always a pruning step
    for start, end, every in ((100, 500, 100), (100, 500, 150), (0, 7, 3), (5, 5, 1)):
        assert [t for t in range(end + 10) if is_pruning_step(t, start, end, every)] == pruning_steps(start, end, every)
