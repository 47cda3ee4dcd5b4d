"""Terminal progress: a live bar on a terminal, one line per evaluation in a log, nothing with ``--quiet``."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Shows steps, the live loss, ETA, steps/s and the latest metrics. Redraws at most ``hz`` times per second.

    On a terminal the line is fitted to its width by dropping the least useful parts first (training metrics,
    the bar, steps/s, validation metrics): step, loss and ETA stay visible on an 80-column terminal.
    """

    def __init__(self, total: int, start: int = 0, quiet: bool = False, stream: TextIO | None = None, hz: float = 8):
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.min_interval = 1.0 / hz
        self._t0, self._s0, self._last_draw = time.perf_counter(), start, 0.0
        self.metrics: dict[str, Any] = {}
        self.loss: float | None = None  # the latest training step's loss; kept across evaluations

    def _parts(self, step: int) -> list[tuple[int, str]]:
        """(drop rank, text) in display order; rank 0 is always shown, the highest rank is dropped first."""
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 and step > self._s0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        frac = step / self.total if self.total else 1.0
        parts = [(4, "[" + "#" * int(24 * frac) + "." * (24 - int(24 * frac)) + "]"), (0, f"{step}/{self.total}")]
        if self.loss is not None:
            parts.append((0, f"loss {self.loss:.4g}"))
        parts += [(1, f"ETA {format_seconds(eta)}"), (3, f"{rate:.1f} step/s")]
        for key, value in self.metrics.items():
            if isinstance(value, (int, float)):
                parts.append((5 if key.startswith("train_") else 2, f"{key} {value:.4g}"))
        return parts

    def _line(self, step: int, width: int | None = None) -> str:
        """The progress line, at most ``width`` characters (None: everything, as in a log file)."""
        parts = self._parts(step)
        line = "  ".join(text for _, text in parts)
        if width is None:
            return line
        while len(line) > width and any(rank for rank, _ in parts):
            parts.pop(max(range(len(parts)), key=lambda i: (parts[i][0], i)))  # the last part of the highest rank
            line = "  ".join(text for _, text in parts)
        return line[:width]

    def step(self, step: int, loss: Any = None) -> None:
        """Called every training step; cheap unless it is time to redraw.

        ``loss`` may be a device tensor: it is read (forcing a device sync) only when the line is redrawn.
        """
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval:
            self._last_draw = now
            if loss is not None:
                self.loss = float(loss)
            width = shutil.get_terminal_size((120, 24)).columns - 1  # a wrapped line would break the \r redraw
            self.stream.write("\r\x1b[2K" + self._line(step, width))
            self.stream.flush()

    def evaluated(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics = metrics
        if self.quiet:
            return
        if self.live:
            self._last_draw = 0.0
            self.step(step)
        else:
            self.stream.write(self._line(step) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
