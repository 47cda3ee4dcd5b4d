"""The part of a run's ``summary.json`` that follows from its logs alone.

The trainer writes ``summary.json`` when a run ends, from these functions plus what only it knows (status,
steps and training time to the last step, the config, versions, the command). A report on a run still in
progress, or killed before it wrote one, derives the same keys with the same functions, so the two never
disagree about what "final" or "best" means.

Pure functions of plain rows (as :meth:`trainlab.rundir.RunDir.metrics` returns them: step order, one row per
step) and event dicts (as :meth:`~trainlab.rundir.RunDir.events` returns them); no numpy. A task sequence's
``continual`` entry (accuracy matrix, ACC/BWT/FWT, forgetting, min-ACC, WC-ACC, stability gaps) comes from
:mod:`trainlab.continual.metrics`, pure in the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from trainlab.continual import metrics as continual_metrics

__all__ = ["PROBE_SECONDS", "from_rows", "final_values", "probe_cost", "from_events", "continual_summary"]

PROBE_SECONDS = "probe_seconds"  # ``probe_seconds/<probe>``: the measured seconds of one call of a probe


def from_rows(rows: Sequence[dict[str, Any]], metric: str, higher_is_better: bool) -> dict[str, Any]:
    """``steps``, ``train_time``, ``cpu_time``, ``wall_time``, ``final`` and ``best_val_<metric>`` of ``rows``.

    ``steps`` is the last row's step and ``train_time`` / ``cpu_time`` / ``wall_time`` the last finite ``time`` /
    ``cpu_time`` / ``wall`` (seconds, rounded to ms; ``cpu_time`` is None for rows written before the CPU clock):
    the trainer, which has counted steps and both training clocks up to its very last step, replaces the first three
    with its own. ``final`` maps each key to its value in the last row that carries it: a row of
    probes between evaluations has no ``train_*`` / ``val_*`` keys, so the last row alone would lose them.
    ``best_val_<metric>`` is the best finite validation value (``None`` when there is none).
    """
    last_time, last_wall = _last_finite(rows, "time"), _last_finite(rows, "wall")
    last_cpu = _last_finite(rows, "cpu_time")
    return {
        "steps": rows[-1]["step"] if rows else None,
        "train_time": round(last_time, 3) if last_time is not None else None,
        "cpu_time": round(last_cpu, 3) if last_cpu is not None else None,
        "wall_time": round(last_wall, 3) if last_wall is not None else None,
        "final": final_values(rows),
        f"best_val_{metric}": _best(rows, f"val_{metric}", higher_is_better),
    }


def final_values(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Each key's value in the last row that carries it (null and non-finite values included)."""
    final: dict[str, Any] = {}
    for row in rows:
        final.update(row)
    return final


def probe_cost(rows: Iterable[dict[str, Any]], probes: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{probe: {"calls": n, "seconds": s}}`` from the ``probe_seconds/<probe>`` values of ``rows``.

    ``probes`` names the probes to report (a configured probe that never ran gets 0 calls); by default, every
    probe that has a ``probe_seconds/`` key.
    """
    seconds: dict[str, list[float]] = {name: [] for name in probes or ()}
    prefix = f"{PROBE_SECONDS}/"
    for row in rows:
        for key, value in row.items():
            name = key[len(prefix):] if key.startswith(prefix) else ""
            if name and (probes is None or name in seconds) and _is_finite(value):
                seconds.setdefault(name, []).append(float(value))
    return {name: {"calls": len(values), "seconds": round(sum(values), 3)} for name, values in seconds.items()}


def from_events(events: Iterable[dict[str, Any]], repeating: Iterable[str] = ()) -> dict[str, Any]:
    """The ``events`` entry of a summary: each event's first step, ``<name>_count`` for events that fire more
    than once (always for the names in ``repeating``), and the grokking delay between ``memorized`` and
    ``generalized`` in steps and training seconds (``None`` until both fired)."""
    events = list(events)
    out: dict[str, Any] = {}
    first: dict[str, dict[str, Any]] = {}
    for event in events:
        first.setdefault(event["name"], event)
        out.setdefault(event["name"], event["step"])
    repeating = set(repeating)
    for name, count in Counter(event["name"] for event in events).items():
        if count > 1 or name in repeating:
            out[f"{name}_count"] = count
    mem, gen = first.get("memorized"), first.get("generalized")
    out.setdefault("memorized", None)
    out.setdefault("generalized", None)
    out["grokking_delay_steps"] = out["grokking_delay_seconds"] = None
    if mem is not None and gen is not None:
        out["grokking_delay_steps"] = gen["step"] - mem["step"]
        if _is_finite(mem.get("time")) and _is_finite(gen.get("time")):
            out["grokking_delay_seconds"] = round(gen["time"] - mem["time"], 3)
    return out


def continual_summary(rows: Sequence[dict[str, Any]], end_step: int | None) -> dict[str, Any]:
    """``{"continual": ...}`` for the rows of a task sequence (:func:`trainlab.continual.metrics.summary`; its
    last task ends at ``end_step``, the run's planned steps), ``{}`` for any other run's rows: a summary of a run
    that is no sequence has no ``continual`` key."""
    entry = continual_metrics.summary(rows, end_step)
    return {"continual": entry} if entry else {}


def _is_finite(value: Any) -> bool:
    """A finite int or float (not a bool, not JSON null, not the ``"inf"`` the writer puts for infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _last_finite(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    return next((float(row[key]) for row in reversed(rows) if _is_finite(row.get(key))), None)


def _best(rows: Iterable[dict[str, Any]], key: str, higher_is_better: bool) -> float | None:
    values = [row[key] for row in rows if _is_finite(row.get(key))]
    if not values:
        return None
    return (max if higher_is_better else min)(values)
