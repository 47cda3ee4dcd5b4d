"""Figures of a task sequence (a run whose summary has a ``continual`` entry, :mod:`trainlab.continual.metrics`).

- :func:`plot_continual`, one run: ``continual_matrix.png``, the accuracy matrix R[i][j] (Lopez-Paz & Ranzato
  2017) as a heat-map with its numbers, the accuracies at step 0 (b) as its first row;
  ``continual_tasks.png``, every task's validation accuracy over the steps, task boundaries as dashed lines
  and ``stability_gap`` events as triangles on the task that fell; ``continual_switches.png``, one panel per
  switch on a log axis of steps since the switch, where the dense evaluations after each switch show the
  stability gap (De Lange et al. 2023): each old task's dip below its value at the switch (dotted) and its
  recovery.
- :func:`plot_compare_continual`, several runs: ``continual_matrices.png``, their matrices side by side, and
  ``continual_val_acc.png``, their ``val_acc`` (the mean over the tasks seen so far) on one plot.

Like :mod:`trainlab.report.plots`, nothing here touches pyplot; files go through :mod:`trainlab.report.output`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainlab.report.plots import (
    DPI,
    RUN_COLORS,
    THRESHOLD_COLOR,
    _fit_legend,
    _new_figure,
    _run_labels,
    _save,
    _step_tick,
    _style_axes,
    _text,
    _xy,
)
from trainlab.report.runs import Run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_continual", "plot_compare_continual"]

TASK_COLORS = RUN_COLORS  # one colour per task (they repeat past ten tasks)
MAX_ANNOTATED_TASKS = 12  # heat-map cells carry their numbers up to this many tasks (beyond, too small to read)
MAX_LEGEND_TASKS = 10
MAX_SWITCH_PANELS = 9  # longer sequences: this many switches, evenly spread
BOUNDARY_STYLE: dict[str, Any] = {"color": THRESHOLD_COLOR, "ls": "--", "lw": 0.9, "zorder": 1}


# ------------------------------------------------------------------------------------------ one run


def plot_continual(run: Run, out_dir: str | Path) -> list[Path]:
    """Write the figures of a task sequence's run (see the module's docstring) to ``out_dir``; returns the paths
    written, none for a run that is no sequence."""
    entry = run.continual
    if entry is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [("continual_matrix", _matrix_figure(run, entry)), ("continual_tasks", _tasks_figure(run, entry))]
    if entry.get("switch_steps"):
        figures.append(("continual_switches", _switches_figure(run, entry)))
    written = []
    for stem, fig in figures:
        _save(fig, out / f"{stem}.png")
        written.append(out / f"{stem}.png")
    return written


def _matrix_figure(run: Run, entry: dict[str, Any]) -> Figure:
    fig, ax = _new_figure()
    _draw_matrix(ax, entry)
    ax.set_title(f"{_text(run.name)}: accuracy matrix", loc="left", fontsize=11)
    return fig


def _draw_matrix(ax: Axes, entry: dict[str, Any], *, fontsize: float = 8.0, bar_label: str = "accuracy") -> None:
    """R (rows: after each finished task) under b (row ``init``) as a heat-map on [0, 1], numbers in the cells."""
    rows, labels = matrix_rows(entry)
    data = np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=bar_label)
    count = data.shape[1]
    ax.set_xticks(range(count), [str(j) for j in range(count)] if count <= 20 else [""] * count)
    ax.set_yticks(range(len(labels)), labels if len(labels) <= 21 else [""] * len(labels))
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("after training task")
    ax.grid(False)
    if labels and labels[0] == "init":
        ax.axhline(0.5, color="white", lw=2.0)  # b is no row of R
    if count <= MAX_ANNOTATED_TASKS:
        for (i, j), value in np.ndenumerate(data):
            if math.isfinite(value):  # dark cells (low accuracy on viridis) get white numbers
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if value < 0.5 else "black")


def matrix_rows(entry: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """The heat-map's rows and their labels: b (``init``) when the run has a row of step 0, then R's rows."""
    rows, labels = [], []
    if isinstance(entry.get("initial"), list):
        rows.append(entry["initial"])
        labels.append("init")
    rows += entry["matrix"]
    labels += [str(i) for i in range(len(entry["matrix"]))]
    return rows, labels


def _tasks_figure(run: Run, entry: dict[str, Any]) -> Figure:
    fig, ax = _new_figure()
    count = int(entry.get("tasks") or 0)
    for j in range(count):
        xy = _xy(run, f"task{j}_acc", logx=False)
        if xy is not None:
            ax.plot(*xy, color=TASK_COLORS[j % len(TASK_COLORS)], lw=1.3,
                    label=f"task {j}" if j < MAX_LEGEND_TASKS else None)
    for step in entry.get("switch_steps") or []:
        ax.axvline(step, **BOUNDARY_STYLE)
    _mark_gap_events(ax, run)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.xaxis.set_major_formatter(_step_formatter())
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{_text(run.name)}: accuracy on each task; dashed: task switches", loc="left", fontsize=11)
    if count:
        _fit_legend(fig, ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9))
    return fig


def _mark_gap_events(ax: Axes, run: Run) -> None:
    """A triangle at each ``stability_gap`` event, on the curve of the task it names (its ``metric``)."""
    for event in run.events:
        metric, step, value = event.get("metric"), event.get("step"), event.get("value")
        if event.get("name") != "stability_gap" or not isinstance(metric, str) or not metric.startswith("task"):
            continue
        if isinstance(step, (int, float)) and isinstance(value, (int, float)):
            task = metric[len("task"):].removesuffix("_acc")
            color = TASK_COLORS[int(task) % len(TASK_COLORS)] if task.isdigit() else THRESHOLD_COLOR
            ax.plot([step], [value], marker="v", ms=8, color=color, markeredgecolor="black", zorder=5, ls="none")


def _switches_figure(run: Run, entry: dict[str, Any]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    switches = list(entry["switch_steps"])
    chosen = _spread(len(switches), MAX_SWITCH_PANELS)
    ncols = 2 if len(chosen) in (2, 4) else min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    height = 2.8 * nrows + 0.6
    fig = Figure(figsize=(11.0 if ncols == 3 else 4.0 * ncols + 1.5, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / height + 0.03, top=1.0 - 0.6 / height, wspace=0.25,
                        hspace=0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ends = [*switches[1:], None]
    for ax, k in zip(axes, chosen):
        _style_axes(ax)
        _draw_switch(ax, run, k + 1, switches[k], ends[k])
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    fig.suptitle(f"{_text(run.name)}: after each switch (log steps since it); dotted: each old task's accuracy at "
                 "the switch", x=0.01, ha="left", y=1.0 - 0.12 / height, va="top", fontsize=10)
    return fig


def _draw_switch(ax: Axes, run: Run, task: int, start: int, end: int | None) -> None:
    """Tasks ``0..task`` over the steps from the switch to ``task`` at ``start`` until ``end`` (the next switch;
    None: the last row), against the steps since the switch; each old task's value at the switch dotted."""
    for j in range(task + 1):
        xy = run.series(f"task{j}_acc")
        if xy is None:
            continue
        steps, values = xy
        inside = (steps >= start) & (steps <= (end if end is not None else steps.max()))
        offsets, values = steps[inside] - start, values[inside]
        color = TASK_COLORS[j % len(TASK_COLORS)]
        if j < task and offsets.size and offsets[0] == 0:
            ax.axhline(values[0], color=color, ls=":", lw=1.0)
        later = offsets > 0  # a log axis has no offset 0: the switch's own value is the dotted line
        ax.plot(offsets[later], values[later], color=color, lw=1.3, marker="o", ms=2.0,
                label=f"task {j}" if j < MAX_LEGEND_TASKS else None)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"switch to task {task} (step {start:,})", loc="left", fontsize=9)
    ax.set_xlabel("steps since the switch", fontsize=8)
    ax.tick_params(labelsize=7)
    if task < MAX_LEGEND_TASKS:
        ax.legend(fontsize=6.5, loc="best", frameon=True, framealpha=0.8, edgecolor="none")


def _spread(count: int, limit: int) -> list[int]:
    """``min(count, limit)`` indices of ``range(count)``, evenly spread, the first and the last included."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def _break_at(xy: tuple[np.ndarray, np.ndarray], switches: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``xy`` with a gap before each switch: val_acc jumps there by definition (a new task joins the mean), and a
    line from the last evaluation before the switch would draw that jump as a slow decline."""
    x, y = xy
    where = np.unique(np.searchsorted(x, np.asarray(switches, dtype=np.float64)))
    where = where[(where > 0) & (where < x.size)]
    return np.insert(x, where, np.nan), np.insert(y, where, np.nan)


def _step_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_step_tick)


# ---------------------------------------------------------------------------------------- several runs


def plot_compare_continual(runs: Sequence[Run], out_dir: str | Path) -> list[Path]:
    """Write ``continual_matrices.png`` (each sequence's accuracy matrix, side by side) and
    ``continual_val_acc.png`` (their ``val_acc`` over the steps, task switches dashed) to ``out_dir``, in the
    colours :func:`~trainlab.report.plots.plot_compare` gives the runs; returns the paths written, none when no
    run is a task sequence."""
    runs = list(runs)
    colors = {id(r): RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(runs)}
    sequences = [run for run in runs if run.continual is not None]
    if not sequences:
        return []
    labels = _run_labels(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "continual_matrices.png", out / "continual_val_acc.png"]
    _save(_matrices_figure(sequences, labels), written[0])
    _save(_val_acc_figure(sequences, labels, colors), written[1])
    return written


def _matrices_figure(runs: list[Run], labels: dict[int, str]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    height = 3.6 * nrows + 0.3
    fig = Figure(figsize=(4.6 * ncols + 0.6, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=1.0 - 0.45 / fig.get_figwidth(), bottom=0.5 / height + 0.04,
                        top=1.0 - 0.45 / height, wspace=0.35, hspace=0.45)  # (room for the last colour bar's ticks)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, run in zip(axes, runs):
        entry = run.continual
        assert entry is not None  # (only sequences are passed)
        _draw_matrix(ax, entry, fontsize=7.0, bar_label="")  # side by side, a label would crowd the next panel
        acc = entry.get("acc")
        ax.set_title(labels[id(run)] + (f"  ACC {acc:.3f}" if isinstance(acc, (int, float)) else ""), loc="left",
                     fontsize=9)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    return fig


def _val_acc_figure(runs: list[Run], labels: dict[int, str], colors: dict[int, str]) -> Figure:
    fig, ax = _new_figure()
    boundaries = {tuple(run.continual["switch_steps"]) for run in runs if run.continual is not None}
    for run in runs:
        xy = _xy(run, "val_acc", logx=False)
        if xy is not None and run.continual is not None:
            ax.plot(*_break_at(xy, run.continual["switch_steps"]), color=colors[id(run)], lw=1.5,
                    label=labels[id(run)])
        if len(boundaries) > 1 and run.continual is not None:  # runs of different sequences: each its own switches
            for step in run.continual["switch_steps"]:
                ax.axvline(step, **{**BOUNDARY_STYLE, "color": colors[id(run)], "alpha": 0.5})
    if len(boundaries) == 1:
        for step in next(iter(boundaries)):
            ax.axvline(step, **BOUNDARY_STYLE)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.xaxis.set_major_formatter(_step_formatter())
    ax.set_ylabel("mean accuracy over the tasks seen")
    ax.set_title(f"val_acc (mean over the tasks seen so far): {len(runs)} runs; dashed: task switches", loc="left",
                 fontsize=11)
    _fit_legend(fig, ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9))
    return fig
