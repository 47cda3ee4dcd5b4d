"""Batch-size learning-rate scaling rules."""

import math

import pytest

from trainlab.schedules import scale_lr


def test_linear_and_sqrt_rules():
    assert scale_lr(0.1, 256, 1024) == pytest.approx(0.4)  # Goyal et al.: k× batch, k× lr
    assert scale_lr(0.1, 256, 1024, rule="sqrt") == pytest.approx(0.2)  # Krizhevsky / Hoffer et al.: √k
    assert scale_lr(0.1, 256, 64, rule="sqrt") == pytest.approx(0.05)
    assert scale_lr(3e-4, 32, 32) == 3e-4 and scale_lr(3e-4, 32, 32, rule="sqrt") == 3e-4
    assert scale_lr(1.0, 3, 7, rule="sqrt") == pytest.approx(math.sqrt(7 / 3))


@pytest.mark.parametrize("args", [(0.1, 0, 32, "linear"), (0.1, 32, -1, "linear"), (-0.1, 32, 64, "linear"),
                                  (0.1, 32, 64, "cubic")])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        scale_lr(*args[:3], rule=args[3])
