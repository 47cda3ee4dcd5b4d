"""TensorBoard event files of a run (``tensorboard=true``; ``pip install 'trainlab[tensorboard]'``).

Every metrics row goes in under its column names (``val_loss``, ``hessian/top``, ...), every trace row under
``trace/loss``, ``trace/lr`` and ``trace/grad_norm``; the x axis is the step (optimizer steps taken), as in
``metrics.jsonl``. A resumed run opens the writer with ``purge_step`` = its checkpoint's step, so TensorBoard
drops what the interrupted session wrote after the checkpoint (rows that the resumed run writes again), and
it writes the checkpoint's own row again: no duplicate points, none missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def require() -> None:
    """Raise a one-line :class:`~trainlab.errors.RunError` when the tensorboard package is missing."""
    from trainlab.errors import RunError

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise RunError("tensorboard=true needs the tensorboard package: pip install 'trainlab[tensorboard]'") from None


class TensorBoardLog:
    """Writes rows to ``run_dir/tensorboard``; ``resume_rows`` are rows of ``resume_step`` to write again."""

    def __init__(self, run_dir: Path, resume_step: int | None = None,
                 resume_rows: Sequence[dict[str, Any]] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step)
        for row in resume_rows:
            self.add_row(row)

    def add_row(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step" and _number(value):
                self.writer.add_scalar(key, value, row["step"])

    def add_trace(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            for key in ("loss", "lr", "grad_norm"):
                if _number(row.get(key)):
                    self.writer.add_scalar(f"trace/{key}", row[key], row["step"])

    def close(self) -> None:
        self.writer.close()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
