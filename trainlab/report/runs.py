"""Run directories read for the reports: numeric columns for plotting, and the summary to show.

The files are read through :class:`trainlab.rundir.RunDir` (their rules -- torn last lines, repeated steps,
strict JSON, one-line :class:`~trainlab.errors.RunDirError` messages -- are its own); this module turns them
into a :class:`Run`.

Rows differ in their keys: an evaluation row has ``train_*`` / ``val_*``; a step probed between evaluations has
only ``step``, ``time``, ``wall``, ``lr`` and its probes' ``<probe>/<key>`` values and ``probe_seconds/<probe>``.
:attr:`Run.present` says which rows carry a key (null included), so that a key a row lacks is told apart from
a value that was null (a NaN/inf probe value, a diverged loss).

Only ``metrics.jsonl`` is required. The summary is ``summary.json`` as the run wrote it; a run that is still in
progress (or was killed) has none, and then the summary is derived from the metrics and events with the same
functions the trainer uses (:mod:`trainlab.rundir.summary`), and :attr:`Run.has_summary` is ``False``. A task
sequence's ``continual`` entry is derived the same way (its last task ends at the config's ``steps``), so the
report of a run in progress shows the accuracy matrix of the tasks finished so far.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainlab.rundir import RunDir
from trainlab.rundir import summary as summary_of
from trainlab.rundir.summary import PROBE_SECONDS

__all__ = ["Run", "load_run"]

# Metric names whose larger values are worse (used only when summary.json does not say).
_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "err", "error", "ppl", "perplexity", "nll")


@dataclass
class Run:
    """One training run read from disk.

    ``metrics`` maps a column name (``step``, ``time``, ``wall``, ``lr``, ``train_loss``, ``val_loss``,
    ``train_<metric>``, ``val_<metric>``, ...) to a float array with one entry per evaluation row, NaN where a
    row lacks the key or holds null; ``step`` is an int array. ``present`` maps a column name to a bool array:
    whether each row carries the key at all (null counts as carried). ``summary`` is ``summary.json`` as written,
    with only the keys it lacks derived from the other files (all of them when there is no ``summary.json``), so
    every key the reports use is present; ``has_summary`` says whether the file existed. ``metric`` is the workload's metric name (``acc``, ``mse``, ...), or ``loss`` when the
    run records none.
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    events: list[dict[str, Any]]
    summary: dict[str, Any]
    metric: str
    has_summary: bool = True
    warnings: list[str] = field(default_factory=list)
    present: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def steps(self) -> np.ndarray:
        return self.metrics["step"]

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "unknown")

    @property
    def workload(self) -> str:
        return str(self.summary.get("workload") or "")

    @property
    def threshold(self) -> float | None:
        return _as_float_or_none(self.summary.get("threshold"))

    @property
    def higher_is_better(self) -> bool:
        return bool(self.summary.get("higher_is_better", True))

    @property
    def continual(self) -> dict[str, Any] | None:
        """A task sequence's ``continual`` summary entry (:func:`trainlab.continual.metrics.summary`: the accuracy
        matrix, ACC, BWT, FWT, forgetting, min-ACC, WC-ACC, stability gaps), or None for any other run."""
        entry = self.summary.get("continual")
        return entry if isinstance(entry, dict) and isinstance(entry.get("matrix"), list) else None

    def column(self, name: str) -> np.ndarray | None:
        """The metrics column ``name``, or ``None`` when the run never recorded it."""
        return self.metrics.get(name)

    def carried(self, name: str) -> np.ndarray:
        """Whether each row carries ``name`` (null included); all False when the run never recorded it."""
        mask = self.present.get(name)
        if mask is not None:
            return mask
        values = self.metrics.get(name)
        return np.zeros(len(self.steps), dtype=bool) if values is None else np.ones(len(values), dtype=bool)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Steps and values of the rows that carry ``name`` (null/NaN/inf kept as they are), or ``None``."""
        values = self.metrics.get(name)
        if values is None:
            return None
        mask = self.carried(name)
        return self.steps[mask], values[mask]

    def last(self, name: str) -> float | None:
        """The value of ``name`` in the last row that carries it (NaN when that row held null), or ``None``."""
        xy = self.series(name)
        if xy is None or xy[1].size == 0:
            return None
        return float(xy[1][-1])

    @property
    def probes(self) -> dict[str, list[str]]:
        """The probes recorded in ``metrics.jsonl``: probe name -> its keys (``<probe>/<key>`` columns), in the
        order they first appear. ``probe_seconds/<probe>`` columns are costs, not probe values."""
        out: dict[str, list[str]] = {}
        for column in self.metrics:
            probe, sep, key = column.partition("/")
            if sep and probe and key and probe != PROBE_SECONDS:
                out.setdefault(probe, []).append(key)
        return out

    @property
    def probe_cost(self) -> dict[str, dict[str, float]]:
        """Each configured probe's ``{"calls": n, "seconds": s}``: from ``summary.json``, else derived from the
        ``probe_seconds/<probe>`` columns."""
        probes = self.summary.get("probes")
        cost = probes.get("cost") if isinstance(probes, dict) else None
        if not isinstance(cost, dict):
            return {}
        return {str(k): v for k, v in cost.items() if isinstance(v, dict)}

    @property
    def probes_skipped(self) -> dict[str, str]:
        """Probes the trainer dropped because they do not apply (name -> reason), from ``summary.json``."""
        probes = self.summary.get("probes")
        skipped = probes.get("skipped") if isinstance(probes, dict) else None
        if not isinstance(skipped, dict):
            return {}
        return {str(k): str(v) for k, v in skipped.items()}


def load_run(path: str | Path) -> Run:
    """Read the run directory ``path``; a one-line :class:`~trainlab.errors.RunDirError` when it is not one, has
    no metrics, or holds a damaged file."""
    rd = RunDir.open(path)
    rows = rd.metrics(required=True)
    config = rd.config()
    written = rd.summary()
    events = rd.events() if rd.events_path.exists() else _events_from_summary(written)
    metrics, present = _columns(rows)
    metric = _pick_metric(written, metrics)
    derived = _derived_summary(rd, config, rows, events, metric, _higher_is_better(written, metric))
    summary = derived if written is None else _fill(written, derived)
    name = str(summary.get("name") or rd.path.resolve().name)
    summary["name"] = name
    for note in rd.notes:
        warnings.warn(note, stacklevel=2)
    return Run(
        path=rd.path,
        name=name,
        config=config,
        metrics=metrics,
        events=events,
        summary=summary,
        metric=metric,
        has_summary=written is not None,
        warnings=rd.notes,
        present=present,
    )


def _columns(rows: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The numeric columns of ``rows`` (NaN where a row lacks the key or holds null) and which rows carry each.

    A column holds numbers (or null); columns holding anything else (text, lists) are left out.
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))  # first-appearance order, one pass
    numeric = [c for c in columns if all(r.get(c) is None or isinstance(r.get(c), (int, float)) for r in rows)]
    out: dict[str, np.ndarray] = {"step": np.array([r["step"] for r in rows], dtype=np.int64)}
    present: dict[str, np.ndarray] = {"step": np.ones(len(rows), dtype=bool)}
    for col in numeric:
        if col == "step":
            continue
        out[col] = np.array([_to_float(r.get(col)) for r in rows], dtype=np.float64)
        present[col] = np.array([col in r for r in rows], dtype=bool)
    return out, present


# ------------------------------------------------------------------------------------------ deriving


def _events_from_summary(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The events of ``summary.json`` when ``events.json`` is missing: its ``event_list`` (every event, with
    its detail), else minimal ones from its ``events`` steps."""
    listed = (summary or {}).get("event_list")
    if isinstance(listed, list):
        return [e for e in listed if isinstance(e, dict) and isinstance(e.get("name"), str) and _is_int(e.get("step"))]
    found = (summary or {}).get("events")
    if not isinstance(found, dict):
        return []
    return [
        {"name": key, "step": value}
        for key, value in found.items()
        if _is_int(value) and not key.startswith("grokking_delay") and not key.endswith("_count")
    ]


def _pick_metric(summary: dict[str, Any] | None, metrics: dict[str, np.ndarray]) -> str:
    named = (summary or {}).get("metric")
    if isinstance(named, str) and named:
        return named
    # The first ``val_X`` column (other than the loss) that has a ``train_X`` partner, else any ``val_X``.
    candidates = [c[4:] for c in metrics if c.startswith("val_") and c != "val_loss"]
    paired = [c for c in candidates if f"train_{c}" in metrics]
    if paired:
        return paired[0]
    return candidates[0] if candidates else "loss"


def _higher_is_better(summary: dict[str, Any] | None, metric: str) -> bool:
    said = (summary or {}).get("higher_is_better")
    if isinstance(said, bool):
        return said
    return not any(metric.lower().endswith(s) for s in _LOWER_IS_BETTER)


def _derived_summary(rd: RunDir, config: dict[str, Any], rows: list[dict[str, Any]], events: list[dict[str, Any]],
                     metric: str, higher_is_better: bool) -> dict[str, Any]:
    """What ``summary.json`` would say, from the other files: the whole summary of a run that has not written
    one (in progress, or killed), the keys an older summary lacks otherwise."""
    workload = config.get("workload")
    workload_name = workload.get("name") if isinstance(workload, dict) else workload
    threshold = config.get("threshold")
    if threshold is None and isinstance(workload, dict):
        threshold = workload.get("threshold")
    return {
        "name": config.get("name") or rd.path.resolve().name,
        "status": "incomplete",
        "workload": str(workload_name) if workload_name is not None else "",
        "metric": metric,
        "higher_is_better": higher_is_better,
        "threshold": _as_float_or_none(threshold),
        **summary_of.from_rows(rows, metric, higher_is_better),
        "events": summary_of.from_events(events),
        **summary_of.continual_summary(rows, _planned_steps(config)),
        "probes": {"cost": summary_of.probe_cost(rows), "skipped": {}},
        "versions": {},
        "command": "",
    }


def _planned_steps(config: dict[str, Any]) -> int | None:
    """The run's planned steps from its resolved config (where its last task ends), or None when it does not
    say."""
    steps = config.get("steps")
    return steps if _is_int(steps) else None


def _fill(written: dict[str, Any], derived: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` as the run wrote it, with only the keys it lacks taken from ``derived`` (inside
    ``events`` and ``probes`` too)."""
    out = {**derived, **written}
    for key in ("events", "probes"):
        if isinstance(written.get(key), dict):
            out[key] = {**derived[key], **written[key]}
    return out


# ------------------------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    """An int or float (NaN and inf included), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def _as_float_or_none(value: Any) -> float | None:
    if value is None or not _is_number(value):
        return None
    return float(value)
