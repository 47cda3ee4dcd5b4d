"""Continual-learning metrics of a task sequence, from its metrics rows alone.

Pure functions of rows as :meth:`trainlab.rundir.RunDir.metrics` returns them (step order; no torch, no numpy),
so the trainer's ``summary.json`` and a report on a run in progress compute the same numbers. The rows of a task
sequence (:mod:`trainlab.continual.controller`) carry ``task`` (the task being trained) and every task's
validation accuracy ``task{j}_acc``; the row of step ``s`` describes the model after ``s`` steps, so the row at
a switch ``start_{i+1}`` (the first with ``task == i + 1``) is the model at the end of task ``i``. Task boundaries
are read from where ``task`` changes: no config is needed.

**The accuracy matrix** (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"):
``R[i][j]`` is the accuracy on task ``j`` at the end of task ``i``, one row per finished task; ``b[j]`` the
accuracy at step 0. With ``k`` the last finished task (``k = T - 1`` for a whole sequence of ``T`` tasks, where
these are the paper's definitions; fewer for a run stopped early)::

    ACC = 1/(k+1) Σ_{j≤k} R[k][j]                       average accuracy
    BWT = 1/k     Σ_{j<k} (R[k][j] − R[j][j])            backward transfer (negative: forgetting)
    FWT = 1/k     Σ_{1≤j≤k} (R[j−1][j] − b[j])           forward transfer (zero-shot gain over init)

and the average forgetting of Chaudhry et al. 2018 ("Riemannian Walk for Incremental Learning")::

    F = 1/k Σ_{j<k} (max_{l<k} R[l][j] − R[k][j])

**Continual evaluation** (De Lange et al. 2023, "Continual evaluation for lifelong learning: Identifying the
stability gap"), from every row, not only the ends of tasks; ``A(i, n)`` is task ``i``'s accuracy at step ``n``,
``t`` the last row's step, ``k`` its task and ``t_i`` the end of task ``i``::

    min-ACC = 1/k Σ_{i<k} min_{t_i < n ≤ t} A(i, n)    the worst each old task got after it was learned
    WC-ACC  = A(k, t)/(k+1) + (1 − 1/(k+1)) min-ACC      worst-case accuracy (A(k, t) when k = 0)

The **stability gap** of old task ``i`` at the switch to task ``k`` (``i < k``): its accuracy at the switch minus
its minimum while task ``k`` trains (the switch row and the row that ends task ``k`` included), and the steps
from the switch until it is back within ``tolerance`` of its value at the switch (``None``: not before task
``k`` ended; ``0``: it never fell more than that). De Lange et al. evaluate every step; trainlab evaluates
densely after each switch (``continual.dense_per_decade``), so depth and recovery are as fine as those rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["RECOVERY_TOLERANCE", "is_sequence", "task_count", "accuracy_matrix", "initial_accuracies",
           "average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "min_acc", "wc_acc",
           "stability_gaps", "summary"]

Row = dict[str, Any]
Matrix = list[list[float | None]]

# Back within this much of its accuracy at the switch counts as recovered: about two standard errors of an
# accuracy near 0.9 measured on 500 examples (continual.eval_examples' default cap per task), so noise alone
# rarely keeps a recovered task from counting as one
RECOVERY_TOLERANCE = 0.03


# ------------------------------------------------------------------------------------------------ rows


def evaluations(rows: Sequence[Row]) -> list[Row]:
    """The rows of a task sequence's evaluations: those whose ``task`` indexes one of the sequence's tasks (the
    ``task{j}_acc`` columns of the first row that has a ``task``; a row of probes between evaluations has none).
    A row whose ``task`` is out of that range (a damaged file) is left out rather than indexed past the matrix."""
    tagged = [r for r in rows if isinstance(r.get("task"), int) and not isinstance(r.get("task"), bool)
              and r["task"] >= 0]
    count = _columns(tagged[0]) if tagged else 0
    return [r for r in tagged if r["task"] < count]


def _columns(row: Row) -> int:
    count = 0
    while f"task{count}_acc" in row:
        count += 1
    return count


def is_sequence(rows: Sequence[Row]) -> bool:
    """Whether ``rows`` are a task sequence's (some row carries ``task``)."""
    return bool(evaluations(rows))


def task_count(rows: Sequence[Row]) -> int:
    """The number of tasks: the ``task{j}_acc`` columns of the first evaluation (every row has all of them, so
    that the matrix has entries for tasks not trained yet)."""
    evals = evaluations(rows)
    return _columns(evals[0]) if evals else 0


def accuracy(row: Row, task: int) -> float | None:
    """Task ``task``'s accuracy in ``row``; None when the row lacks it or holds no finite number."""
    value = row.get(f"task{task}_acc")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def task_end_rows(rows: Sequence[Row], end_step: int | None = None) -> list[Row]:
    """The row that ends each finished task, in task order: for task ``i`` the first evaluation of a later task
    (the switch row, the model after task ``i``'s last step); for the last task the row of step ``end_step``
    (the run's planned steps), or the last row when ``end_step`` is None (rows of a finished run)."""
    evals, count = evaluations(rows), task_count(rows)
    ends: list[Row] = []
    for row in evals:
        while len(ends) < row["task"]:  # the first row of task k ends every earlier task not ended yet
            ends.append(row)
    if evals and len(ends) == count - 1 and (end_step is None or evals[-1]["step"] >= end_step):
        ends.append(evals[-1])
    return ends


def _switches(evals: list[Row]) -> list[int]:
    """The positions in ``evals`` of the first evaluation of each task after the first (the switches)."""
    return [p for p in range(1, len(evals)) if evals[p]["task"] > evals[p - 1]["task"]]


def switch_rows(rows: Sequence[Row]) -> list[Row]:
    """The first evaluation of each task after the first (the model at each switch), in task order."""
    evals = evaluations(rows)
    return [evals[p] for p in _switches(evals)]


# ------------------------------------------------------------------------------ the accuracy matrix


def accuracy_matrix(rows: Sequence[Row], end_step: int | None = None) -> Matrix:
    """``R[i][j]``: task ``j``'s accuracy at the end of task ``i`` (Lopez-Paz & Ranzato 2017), one row per
    finished task (:func:`task_end_rows`), one column per task of the sequence."""
    count = task_count(rows)
    return [[accuracy(end, j) for j in range(count)] for end in task_end_rows(rows, end_step)]


def initial_accuracies(rows: Sequence[Row]) -> list[float | None] | None:
    """``b[j]``: each task's accuracy at step 0, before any training (None when there is no row of step 0)."""
    evals = evaluations(rows)
    if not evals or evals[0]["step"] != 0:
        return None
    return [accuracy(evals[0], j) for j in range(task_count(rows))]


def average_accuracy(matrix: Matrix) -> float | None:
    """ACC = 1/(k+1) Σ_{j≤k} R[k][j]: the mean accuracy over the tasks seen, at the end of the last finished
    task ``k`` (Lopez-Paz & Ranzato 2017 with k = T − 1)."""
    if not matrix:
        return None
    k = len(matrix) - 1
    return _mean(matrix[k][j] for j in range(k + 1))


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT = 1/k Σ_{j<k} (R[k][j] − R[j][j]) (Lopez-Paz & Ranzato 2017): how learning later tasks changed the
    accuracy on earlier ones (negative: forgetting). None before a second task finished."""
    k = len(matrix) - 1
    return _mean(_minus(matrix[k][j], matrix[j][j]) for j in range(k)) if k >= 1 else None


def forward_transfer(matrix: Matrix, initial: Sequence[float | None] | None) -> float | None:
    """FWT = 1/k Σ_{1≤j≤k} (R[j−1][j] − b[j]) (Lopez-Paz & Ranzato 2017): how much learning the tasks before
    ``j`` helps task ``j`` before it is trained, over the accuracy at initialisation."""
    k = len(matrix) - 1
    if k < 1 or initial is None:
        return None
    return _mean(_minus(matrix[j - 1][j], initial[j]) for j in range(1, k + 1))


def forgetting(matrix: Matrix) -> float | None:
    """F = 1/k Σ_{j<k} f_j, f_j = max_{l<k} R[l][j] − R[k][j] (Chaudhry et al. 2018): how far each old task
    fell from the best it ever had, at the end of the last finished task ``k``."""
    k = len(matrix) - 1
    if k < 1:
        return None
    drops = []
    for j in range(k):
        best = _max(matrix[l][j] for l in range(k))
        drops.append(_minus(best, matrix[k][j]))
    return _mean(drops)


# ------------------------------------------------------------------------------- continual evaluation


def min_acc(rows: Sequence[Row]) -> float | None:
    """min-ACC = 1/k Σ_{i<k} min_{t_i < n ≤ t} A(i, n) (De Lange et al. 2023): each old task's lowest accuracy
    in any evaluation after the row that ends it, up to the last row (task ``k``), averaged. None while the first
    task trains (no task is old yet)."""
    evals = evaluations(rows)
    if not evals:
        return None
    ends = task_end_rows(rows)
    lows = []
    for i in range(evals[-1]["task"]):
        after = (accuracy(r, i) for r in evals if r["step"] > ends[i]["step"])
        lows.append(_min(after))
    return _mean(lows)


def wc_acc(rows: Sequence[Row]) -> float | None:
    """WC-ACC = A(k, t)/(k+1) + (1 − 1/(k+1)) min-ACC (De Lange et al. 2023): the mean accuracy over the tasks
    seen in the worst case, the current task ``k`` as it is at the last row and every old one at its lowest."""
    evals = evaluations(rows)
    if not evals:
        return None
    k = evals[-1]["task"]
    current = accuracy(evals[-1], k)
    if k == 0:
        return current
    worst = min_acc(rows)
    return None if current is None or worst is None else current / (k + 1) + (1 - 1 / (k + 1)) * worst


def stability_gaps(rows: Sequence[Row], tolerance: float = RECOVERY_TOLERANCE) -> list[dict[str, Any]]:
    """The stability gap (De Lange et al. 2023) of each old task at each switch: one dict per (switch, old task)
    with ``switch`` (the new task), ``step`` (of the switch), ``task`` (the old one), ``at_switch`` (its
    accuracy there), ``min`` and ``min_step`` (its lowest while the new task trains), ``depth`` (``at_switch −
    min``, >= 0) and ``recovery_steps`` (see the module's docstring)."""
    evals = evaluations(rows)
    starts = _switches(evals)
    gaps = []
    for p, q in zip(starts, [*starts[1:], len(evals) - 1]):
        window = evals[p:q + 1]  # the switch row to the row that ends the new task (the next switch, or the last)
        k = evals[p]["task"]
        for i in range(k):
            gap = _gap(window, i, tolerance)
            if gap is not None:
                gaps.append({"switch": k, "step": evals[p]["step"], "task": i, **gap})
    return gaps


def _gap(window: list[Row], task: int, tolerance: float) -> dict[str, Any] | None:
    """Depth and recovery of ``task``'s accuracy over ``window`` (rows from a switch on)."""
    points = [(r["step"], a) for r in window if (a := accuracy(r, task)) is not None]
    start = accuracy(window[0], task)
    if start is None or not points:
        return None
    low_step, low = min(points, key=lambda p: p[1])  # the first of equal minima
    depth = start - low
    if depth <= tolerance:
        recovery: int | None = 0
    else:
        back = next((s for s, a in points if s >= low_step and a >= start - tolerance), None)
        recovery = None if back is None else back - window[0]["step"]
    return {"at_switch": start, "min": low, "min_step": low_step, "depth": depth, "recovery_steps": recovery}


# ------------------------------------------------------------------------------------------- summary


def summary(rows: Sequence[Row], end_step: int | None = None) -> dict[str, Any]:
    """Everything above for ``summary.json``'s ``continual`` entry (empty for rows that are no sequence's):
    ``tasks`` (T), ``switch_steps``, ``task_end_steps`` (of the matrix's rows), ``initial`` (b), ``matrix``
    (R), ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``min_acc``, ``wc_acc``, ``stability_gaps`` and the
    ``recovery_tolerance`` they used. ``end_step``: the step that ends the last task (see
    :func:`task_end_rows`)."""
    if not is_sequence(rows):
        return {}
    matrix, initial = accuracy_matrix(rows, end_step), initial_accuracies(rows)
    return {
        "tasks": task_count(rows),
        "switch_steps": [r["step"] for r in switch_rows(rows)],
        "task_end_steps": [r["step"] for r in task_end_rows(rows, end_step)],
        "initial": initial,
        "matrix": matrix,
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix, initial),
        "forgetting": forgetting(matrix),
        "min_acc": min_acc(rows),
        "wc_acc": wc_acc(rows),
        "stability_gaps": stability_gaps(rows),
        "recovery_tolerance": RECOVERY_TOLERANCE,
    }


# ------------------------------------------------------------------------------------------- helpers
# Entries may be None (a row without a finite accuracy): a term with a missing entry is left out of a mean.


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _min(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
