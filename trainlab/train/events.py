"""Training events detected from evaluation rows: memorisation, generalisation, divergence.

``memorized``: the first evaluation whose *train* metric reaches the workload's threshold;
``generalized``: the first whose *validation* metric does. The grokking delay (Power et al. 2022) is the
gap between the two, in steps and in training seconds. ``diverged``: the train loss became NaN or inf.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    name: str
    step: int
    time: float  # training seconds at the evaluation that detected it
    value: float | None = None
    metric: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventTracker:
    """Feeds on metrics rows; remembers which events fired so each fires once."""

    def __init__(self, metric: str, higher_is_better: bool, threshold: float, events: list[dict] | None = None):
        self.metric, self.higher_is_better, self.threshold = metric, higher_is_better, threshold
        self.events: list[Event] = [Event(**e) for e in (events or [])]

    def _solved(self, value: Any) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def fired(self, name: str) -> Event | None:
        return next((e for e in self.events if e.name == name), None)

    def update(self, row: dict[str, Any]) -> list[Event]:
        """Record and return the events that first happen at this evaluation row."""
        new: list[Event] = []
        word = ">=" if self.higher_is_better else "<="
        for name, split in (("memorized", "train"), ("generalized", "val")):
            value = row.get(f"{split}_{self.metric}")
            if not self.fired(name) and self._solved(value):
                new.append(Event(name, row["step"], row["time"], value, self.metric,
                                 f"{split} {self.metric} {value:.4g} {word} {self.threshold:g}"))
        loss = row.get("train_loss")
        if not self.fired("diverged") and loss is not None and not math.isfinite(loss):
            new.append(Event("diverged", row["step"], row["time"], None, "loss", f"train loss is {loss}"))
        self.events.extend(new)
        return new

    def summary(self) -> dict[str, Any]:
        mem, gen = self.fired("memorized"), self.fired("generalized")
        out: dict[str, Any] = {e.name: e.step for e in self.events}
        out.setdefault("memorized", None)
        out.setdefault("generalized", None)
        both = mem is not None and gen is not None
        out["grokking_delay_steps"] = gen.step - mem.step if both else None  # type: ignore[union-attr]
        out["grokking_delay_seconds"] = round(gen.time - mem.time, 3) if both else None  # type: ignore[union-attr]
        return out
