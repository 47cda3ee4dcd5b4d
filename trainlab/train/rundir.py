"""The run directory: the one place a run's results live, and all that reports ever read.

    config.yaml      the resolved configuration (``trainlab run config.yaml`` reproduces the run)
    metrics.jsonl    one JSON object per evaluation
    events.json      detected events (memorized, generalized, diverged, ...)
    summary.json     final metrics, events, timings, versions, the exact command, status
    checkpoints/     see :mod:`trainlab.train.state`
    plots/, report.html   written by :mod:`trainlab.report`
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from trainlab.train.checkpoint_io import atomic_write_text


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def new_run_dir(root: Path, name: str) -> Path:
    """A fresh directory ``root/name`` (``-2``, ``-3``... appended if taken)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-") or "run"
    path, k = root / safe, 1
    while path.exists():
        k += 1
        path = root / f"{safe}-{k}"
    return path


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.trace_path = path / "trace.jsonl"
        self.checkpoints = path / "checkpoints"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def has_run(self) -> bool:
        return self.metrics_path.exists() or (self.path / "config.yaml").exists()

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (torn lines skipped)."""
        rows = []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        self.append_jsonl(self.metrics_path, [row])

    @staticmethod
    def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
        with path.open("a") as f:
            f.write("".join(json.dumps({k: _finite_or_none(v) for k, v in row.items()}) + "\n" for row in rows))
            f.flush()

    def truncate_to_checkpoint(self, step: int) -> None:
        """Drop what was logged after the checkpoint of ``step`` a resumed run restarts from (and torn lines).

        metrics.jsonl keeps the evaluation row of ``step`` itself (written before that checkpoint);
        trace.jsonl keeps the steps taken before it (rows ``< step``).
        """
        for path, keep in ((self.metrics_path, lambda s: s <= step), (self.trace_path, lambda s: s < step)):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if keep(row.get("step", 0)):
                    kept.append(line)
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=1, default=str) + "\n")


def versions() -> dict[str, str]:
    import numpy
    import torch

    import trainlab

    return {
        "trainlab": trainlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
