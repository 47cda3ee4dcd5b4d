"""Learning-rate schedules as pure functions ``step -> multiplier`` (see :mod:`.registry`)."""

from trainlab.schedules import basic  # noqa: E402,F401  (registers constant, cosine, linear)
from trainlab.schedules.registry import SCHEDULES, Multiplier, build, names, register

__all__ = ["SCHEDULES", "Multiplier", "build", "names", "register"]
