"""Where the loop's output goes: the run directory, TensorBoard and the terminal, on the main process.

:class:`RunLog` is the one sink :func:`~trainlab.train.loop.train_loop` writes to -- every step (progress),
every metrics row, every drained batch of trace rows and every new event. Other processes of a ``torchrun``
launch show nothing and write nothing (their rows are identical: evaluation is all-reduced).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from trainlab.train.events import Event, EventTracker
from trainlab.train.progress import Progress
from trainlab.rundir import RunDir
from trainlab.train.tensorboard import TensorBoardLog


class RunLog:
    def __init__(self, rd: RunDir, progress: Progress, *, main: bool, tensorboard: TensorBoardLog | None = None):
        self.rd, self.progress, self.main, self.tensorboard = rd, progress, main, tensorboard

    def step(self, step: int, loss: Tensor) -> None:
        self.progress.step(step, loss)

    def message(self, text: str) -> None:
        self.progress.message(text)

    def row(self, row: dict[str, Any]) -> None:
        if self.main:
            self.rd.append_metrics(row)
            if self.tensorboard is not None:
                self.tensorboard.add_row(row)
        shown = {k: v for k, v in row.items() if k.startswith(("train_", "val_"))}
        if shown:  # rows of probes between evaluations carry no metrics to show
            self.progress.evaluated(row["step"], shown)

    def trace(self, rows: list[dict[str, Any]]) -> None:
        if self.main and rows:
            self.rd.append_trace(rows)
            if self.tensorboard is not None:
                self.tensorboard.add_trace(rows)

    def events(self, new: list[Event], tracker: EventTracker) -> None:
        for event in new:
            self.progress.message(f"  event: {event.name} at step {event.step} ({event.detail})")
        if new and self.main:
            self.rd.write_json("events.json", [e.to_dict() for e in tracker.events])

    def close(self) -> None:
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
