"""Learning-rate schedules as pure functions ``step -> multiplier`` (see :mod:`.registry`)."""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

# Importing the modules registers their schedules.
# Registration order is listing order.
from trainlab.schedules import basic  # noqa: I001,E402,F401  (registers constant, cosine, linear)
from trainlab.schedules import wsd  # noqa: E402,F401  (registers wsd, infinite)
from trainlab.schedules import rex  # noqa: E402,F401  (registers rex)
from trainlab.schedules import steps  # noqa: E402,F401  (registers step, multistep, two_regime)
from trainlab.schedules import refined  # noqa: E402,F401  (registers refined)
from trainlab.schedules import slow_start  # noqa: E402,F401  (registers slow_start_fast_decay)
from trainlab.schedules.lr_scheduler import as_lr_scheduler
from trainlab.schedules.registry import SCHEDULES, Multiplier, build, names, register
from trainlab.schedules.scaling import scale_lr

__all__ = ["SCHEDULES", "Multiplier", "as_lr_scheduler", "build", "names", "register", "scale_lr"]
