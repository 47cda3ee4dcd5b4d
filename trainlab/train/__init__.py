"""The trainer: config resolution, the loop, checkpoints, events and the run directory."""

from trainlab.train.config import RunConfig, resolve
from trainlab.train.run import RunError, run

__all__ = ["RunConfig", "RunError", "resolve", "run"]
