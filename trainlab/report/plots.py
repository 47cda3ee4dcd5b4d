"""Training curves as PNG files.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly, so nothing
here touches pyplot's global state or the process-wide backend: plotting is safe from scripts, notebooks,
threads and tests alike.

Non-finite values (a diverged run's NaN/inf, a probe's null) are drawn as gaps; a row that lacks a key (a step
probed between evaluations has no train_*/val_* keys) is left out of that key's line, not drawn as a gap. Log-x
variants
drop step 0 (and any step <= 0) rather than use a symlog axis: symlog's linear band around zero squeezes the
early steps, which are exactly what a log-x view is for, and the step-0 value is visible on the linear plot.

Events are dotted vertical lines, each event name labelled once (with a count when it repeats): a run may
record thousands of events, and the time to draw them is one line and one label per name.
Figures are written by :mod:`trainlab.report.output` (atomically, never over a run's records).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from trainlab.report.output import write_figure
from trainlab.report.runs import Run
from trainlab.rundir import printable

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn: importing trainlab.report stays cheap
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

__all__ = ["plot_run", "plot_compare", "metric_label"]

FIGSIZE = (8.0, 4.2)
DPI = 110
TRAIN_COLOR = "#4c72b0"
VAL_COLOR = "#dd8452"
THRESHOLD_COLOR = "#555555"
EVENT_COLORS = {
    "memorized": "#8172b3", "generalized": "#2ca02c", "diverged": "#c44e52",
    "loss_spike": "#d62728", "slingshot": "#e377c2", "entropy_collapse": "#8c564b",
    "edge_of_stability": "#ff7f0e", "softmax_collapse": "#9467bd", "lazy_to_rich": "#17becf",
    "robust": "#0b6e4f", "stability_gap": "#bcbd22",
}  # fmt: skip
EVENT_DEFAULT_COLOR = "#7f7f7f"
RUN_COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip

_METRIC_LABELS = {
    "acc": "accuracy",
    "accuracy": "accuracy",
    "mse": "mean squared error",
    "mae": "mean absolute error",
    "ppl": "perplexity",
    "loss": "loss",
}


def metric_label(metric: str) -> str:
    """A readable axis label for a metric name (``acc`` -> ``accuracy``)."""
    return _METRIC_LABELS.get(metric, metric.replace("_", " "))


# ------------------------------------------------------------------------------------------ single run


def plot_run(run: Run, out_dir: str | Path) -> list[Path]:
    """Write ``loss.png``, ``loss_logx.png``, ``metric.png`` and ``metric_logx.png`` for ``run`` to ``out_dir``.

    Train and validation curves over steps, event steps as labelled vertical lines, the metric's threshold
    as a dashed horizontal line. The metric plots are left out when the run records no metric besides the
    loss. Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    kinds = ["loss"] + ([run.metric] if run.metric != "loss" else [])
    for kind in kinds:
        for logx in (False, True):
            file = out / f"{'loss' if kind == 'loss' else 'metric'}{'_logx' if logx else ''}.png"
            _save(_run_figure(run, kind, logx), file)
            written.append(file)
    return written + plot_federation([run], out)


def _run_figure(run: Run, kind: str, logx: bool) -> Figure:
    fig, ax = _new_figure()
    is_loss = kind == "loss"
    label = "loss" if is_loss else metric_label(kind)
    series = [(f"train_{kind}", "train", TRAIN_COLOR), (f"val_{kind}", "validation", VAL_COLOR)]
    plotted: list[np.ndarray] = []
    for column, name, color in series:
        xy = _xy(run, column, logx)
        if xy is None:
            continue
        x, y = xy
        few = np.isfinite(y).sum() < 3  # a line through one or two points would not show: mark them
        ax.plot(x, y, color=color, lw=1.6, label=name, marker="o" if few else None, ms=3)
        plotted.append(y)

    if not is_loss and run.threshold is not None and math.isfinite(run.threshold):
        ax.axhline(run.threshold, color=THRESHOLD_COLOR, ls="--", lw=1.0, label=f"threshold {run.threshold:g}")

    _draw_events(ax, _event_marks(run), logx)
    lower_is_better = is_loss or not run.higher_is_better
    _finish_axes(ax, plotted, logx=logx, logy_if_positive=lower_is_better)
    ax.set_ylabel(_text(label))
    scale = " (log step)" if logx else ""
    ax.set_title(f"{_text(run.name)}: {_text(label)}{scale}", loc="left", fontsize=11)
    if run.workload:
        ax.set_title(_text(run.workload), loc="right", fontsize=9, color="#666666")
    if plotted:
        _fit_legend(fig, ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9))
    return fig


def _event_marks(run: Run) -> list[tuple[str, float]]:
    """(name, step) for each event with a finite step, plus a ``diverged`` mark derived from the losses."""
    marks: list[tuple[str, float]] = []
    for event in run.events:
        step = event.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            marks.append((str(event.get("name", "event")), float(step)))
    if not any(name == "diverged" for name, _ in marks):
        step = _divergence_step(run)
        if step is not None:
            marks.append(("diverged", step))
    return marks


def _divergence_step(run: Run) -> float | None:
    """The first step of a trailing run of non-finite training losses that follows finite ones, if any (over
    the rows that carry a train loss: a probe-only row is no evidence of divergence)."""
    xy = run.series("train_loss")
    if xy is None:
        return None
    steps, loss = xy
    if loss.size == 0 or np.isfinite(loss[-1]):
        return None
    finite = np.flatnonzero(np.isfinite(loss))
    if finite.size == 0:
        return None
    first_bad = finite[-1] + 1
    return float(steps[first_bad])


# ---------------------------------------------------------------------------------------- several runs


def plot_compare(runs: Sequence[Run], out_dir: str | Path) -> list[Path]:
    """Overlay the curves of several runs: one colour per run, solid = validation, dashed = train.

    Writes ``loss.png`` and ``loss_logx.png``, and ``metric.png`` / ``metric_logx.png`` for the runs that
    record a metric (one pair per metric, named ``metric_<name>.png``, when the runs use different metrics).
    Returns the paths written.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_compare needs at least one run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = _run_labels(runs)
    colors = {id(r): RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(runs)}

    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.metric != "loss":
            groups.setdefault(run.metric, []).append(run)
    jobs: list[tuple[str, str, list[Run]]] = [("loss", "loss", runs)]
    for metric, members in groups.items():
        stem = "metric" if len(groups) == 1 else f"metric_{_safe(metric)}"
        jobs.append((stem, metric, members))

    written: list[Path] = []
    for stem, kind, members in jobs:
        for logx in (False, True):
            file = out / f"{stem}{'_logx' if logx else ''}.png"
            _save(_compare_figure(members, kind, logx, labels, colors), file)
            written.append(file)
    return written + plot_federation(runs, out, labels, colors)


FED_AXES = {"fed_time": ("sim_time", 1.0, "simulated time (s)"),
            "fed_bytes": ("bytes_total", 1e-6, "bytes sent, up + down (MB)")}


def plot_federation(runs: Sequence[Run], out: Path, labels: dict[int, str] | None = None,
                    colors: dict[int, str] | None = None) -> list[Path]:
    """For federated runs (rows with ``sim_time``): the validation metric (or loss) against simulated time
    (``fed_time.png``) and against the bytes clients and server sent (``fed_bytes.png``), one line per run --
    what strategies are compared by, since their steps (server updates) cost different time and bytes."""
    fed = [run for run in runs if run.series("sim_time") is not None]
    if not fed:
        return []
    labels = labels or _run_labels(fed)
    colors = colors or {id(r): RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(fed)}
    metric = fed[0].metric if all(run.metric == fed[0].metric for run in fed) else "loss"
    column = f"val_{metric}"
    written = []
    for stem, (xcol, scale, xlabel) in FED_AXES.items():
        fig, ax = _new_figure()
        plotted = []
        for run in fed:
            xs = _federation_x(run, xcol)
            ys = run.series(column)
            if xs is None or ys is None:
                continue
            at = dict(zip(ys[0].tolist(), ys[1].tolist()))
            points = [(x * scale, at[step]) for step, x in zip(*xs) if step in at and math.isfinite(at[step])]
            if points:
                x, y = np.array(points).T
                ax.plot(x, y, color=colors[id(run)], lw=1.5, label=labels[id(run)])
                plotted.append(y)
        _style_axes(ax)
        ax.set_xlabel(_text(xlabel))
        ax.set_ylabel(_text(f"validation {metric_label(metric)}"))
        ax.set_title(f"validation {_text(metric_label(metric))} against {_text(xlabel.split(' (')[0])}", loc="left",
                     fontsize=11)
        if plotted:
            legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
            _fit_legend(fig, legend)
        file = out / f"{stem}.png"
        _save(fig, file)
        written.append(file)
    return written


def _federation_x(run: Run, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and the x values of a federation axis: ``sim_time``, or ``bytes_up + bytes_down``."""
    if column != "bytes_total":
        return run.series(column)
    up, down = run.series("bytes_up"), run.series("bytes_down")
    if up is None or down is None:
        return None
    return up[0], up[1] + down[1]


def _compare_figure(
    runs: list[Run], kind: str, logx: bool, labels: dict[int, str], colors: dict[int, str]
) -> Figure:
    fig, ax = _new_figure()
    is_loss = kind == "loss"
    label = "loss" if is_loss else metric_label(kind)
    from matplotlib.lines import Line2D

    plotted: list[np.ndarray] = []
    handles: list[Line2D] = []
    for run in runs:
        color = colors[id(run)]
        drew = False
        for column, style in ((f"val_{kind}", "-"), (f"train_{kind}", "--")):
            xy = _xy(run, column, logx)
            if xy is None:
                continue
            x, y = xy
            ax.plot(x, y, color=color, ls=style, lw=1.5 if style == "-" else 1.1, alpha=1.0 if style == "-" else 0.8)
            plotted.append(y)
            drew = True
        if drew:
            handles.append(Line2D([], [], color=color, lw=2.0, label=labels[id(run)]))

    # The threshold line only when the runs that state one agree on it.
    thresholds = {run.threshold for run in runs if run.threshold is not None and math.isfinite(run.threshold)}
    if not is_loss and len(thresholds) == 1:
        (threshold,) = thresholds
        ax.axhline(threshold, color=THRESHOLD_COLOR, ls=":", lw=1.0)
        handles.append(Line2D([], [], color=THRESHOLD_COLOR, ls=":", label=f"threshold {threshold:g}"))

    lower_is_better = is_loss or not all(run.higher_is_better for run in runs)
    _finish_axes(ax, plotted, logx=logx, logy_if_positive=lower_is_better)
    ax.set_ylabel(_text(label))
    ax.set_title(f"{_text(label)}{' (log step)' if logx else ''}: {len(runs)} runs", loc="left", fontsize=11)
    if handles:
        handles += [
            Line2D([], [], color="#333333", ls="-", label="validation"),
            Line2D([], [], color="#333333", ls="--", label="train"),
        ]
        legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
        _fit_legend(fig, legend)
    return fig


def _run_labels(runs: Sequence[Run]) -> dict[int, str]:
    """Legend labels: the run names, with the directory name (then a number) added where names clash."""
    labels = [run.name for run in runs]
    if len(set(labels)) < len(labels):
        labels = [
            f"{run.name} ({run.path.resolve().name})" if labels.count(run.name) > 1 else run.name for run in runs
        ]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return {id(run): _text(_shorten(label)) for run, label in zip(runs, labels)}


# -------------------------------------------------------------------------------------------- helpers


def _new_figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins (see _fit_legend) rather than constrained layout: a third of the rendering time.
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.12, top=0.9)
    ax = fig.add_subplot()
    _style_axes(ax)
    return fig, ax


def _style_axes(ax: Axes) -> None:
    """The house style: light major grid behind the data, no top or right spine."""
    ax.grid(True, which="major", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _renderer(fig: Figure) -> RendererAgg:
    """The renderer of ``fig``'s Agg canvas (every figure here is drawn on one: see :func:`_new_figure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        raise TypeError(f"trainlab's figures are drawn on a FigureCanvasAgg, not {type(canvas).__name__}")
    return canvas.get_renderer()


def _fit_legend(fig: Figure, legend: Legend) -> None:
    """Narrow the axes so that ``legend``, placed right of them, fits inside the figure."""
    width = legend.get_window_extent(_renderer(fig)).width / fig.bbox.width
    fig.subplots_adjust(right=max(0.5, 0.975 - width - 0.02))


def _save(fig: Figure, file: Path) -> None:
    _fit_left_margin(fig)
    write_figure(fig, file, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})


def _fit_left_margin(fig: Figure, pad_px: float = 4.0) -> None:
    """Widen the left margin when the y tick labels or the y label would be cut by the figure's edge.

    The margins are fixed (see :func:`_new_figure`), but tick labels are as wide as their text: long labels
    pushed the y label off the figure.
    """
    renderer = _renderer(fig)
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]  # None for a hidden axes (unused grid cells)
    left = min((box.x0 for box in boxes if box is not None), default=pad_px)
    if left < pad_px:
        fig.subplots_adjust(left=fig.subplotpars.left + (pad_px - left) / fig.bbox.width)


def _xy(run: Run, column: str, logx: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and values of ``column`` over the rows that carry it, non-finite values as NaN (gaps); steps <= 0
    dropped for log-x."""
    xy = run.series(column)
    if xy is None:
        return None
    x = xy[0].astype(np.float64)
    y = np.where(np.isfinite(xy[1]), xy[1], np.nan)
    if logx:
        keep = x > 0
        x, y = x[keep], y[keep]
    if not np.isfinite(y).any():
        return None
    return x, y


def _draw_events(ax: Axes, marks: Iterable[tuple[str, float]], logx: bool, *, annotate: bool = True,
                 fontsize: float = 8.0, lw: float = 1.3) -> None:
    """A dotted vertical line at each event's step and, when ``annotate``, each event name written once, at its
    first step, with a count when it repeats (names first seen at one step share a label).

    One line per name (``gid`` ``event:<name>``, see :func:`_event_lines`) and at most one label, not an artist
    per event: a run can record thousands of events (a loss spike at every other evaluation), and drawing 20,000
    lines and labels took minutes.
    """
    steps_of: dict[str, list[float]] = {}
    for name, step in marks:
        if step > 0 or not logx:  # a log axis has no step 0
            steps_of.setdefault(name, []).append(step)
    first: dict[float, list[str]] = {}
    for name, steps in steps_of.items():
        x, y = _event_lines(steps, logx)
        ax.plot(x, y, transform=ax.get_xaxis_transform(), color=EVENT_COLORS.get(name, EVENT_DEFAULT_COLOR), ls=":",
                lw=lw, zorder=1, gid=f"event:{name}")
        first.setdefault(min(steps), []).append(name)
    if not annotate:
        return
    for step, names in first.items():
        counted = [_text(n) + (f" (\u00d7{len(steps_of[n]):,})" if len(steps_of[n]) > 1 else "") for n in names]
        ax.annotate(
            f"{', '.join(counted)} @ {step:,.0f}", xy=(step, 1.0), xycoords=ax.get_xaxis_transform(),
            xytext=(-3, -4), textcoords="offset points", rotation=90, ha="right", va="top", fontsize=fontsize,
            color=EVENT_COLORS.get(names[0], EVENT_DEFAULT_COLOR),
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 1.0}, annotation_clip=True,
        )


# Event lines closer than this fraction of their span are drawn as one: they are less than a pixel apart on
# any figure narrower than 4,096 pixels, and 20,000 events become a few thousand lines.
EVENT_LINE_BINS = 4096


def _event_lines(steps: Sequence[float], logx: bool) -> tuple[np.ndarray, np.ndarray]:
    """x (steps) and y (fraction of the axes' height) of one line made of a full-height vertical segment at each
    of ``steps``, the segments separated by NaNs; steps less than ``1 / EVENT_LINE_BINS`` of the span apart (on a
    log scale when ``logx``) share one segment."""
    x = np.unique(np.asarray(steps, dtype=np.float64))
    where = np.log10(x) if logx else x
    span = where[-1] - where[0]
    if span > 0:
        _, keep = np.unique(np.floor((where - where[0]) / span * EVENT_LINE_BINS), return_index=True)
        x = x[keep]
    segments = np.repeat(x, 3)
    segments[2::3] = np.nan  # (step, 0) -> (step, 1), then a break
    return segments, np.tile([0.0, 1.0, np.nan], x.size)


def _finish_axes(ax: Axes, plotted: list[np.ndarray], *, logx: bool, logy_if_positive: bool) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("step")
    if logx:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(_step_tick))
    finite = np.concatenate([y[np.isfinite(y)] for y in plotted]) if plotted else np.empty(0)
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite values to plot", transform=ax.transAxes, ha="center", va="center",
                color="#888888")  # fmt: skip
        return
    if logy_if_positive and np.all(finite > 0) and finite.max() > finite.min():
        ax.set_yscale("log")
        _label_short_log_axis(ax.yaxis)


def _label_short_log_axis(axis: Axis) -> None:
    """Plain numbers (``0.3``, ``1.2``) on a log axis with at most one power of ten in view.

    There matplotlib labels the minor ticks too (a lone ``10^0`` would not tell the scale), but in scientific
    notation, ``1.2×10^0``: labels wide enough to push the axis label off the figure. Longer axes keep their
    ``10^k`` labels.
    """
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """matplotlib's choice of which log ticks to label, written as plain numbers."""

        # matplotlib decides whether x gets a label; we decide its text
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    low, high = sorted(axis.get_view_interval())
    if math.floor(math.log10(high)) - math.ceil(math.log10(low)) + 1 <= 1:
        axis.set_major_formatter(PlainLogFormatter())
        axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def _step_tick(value: float, _pos: int) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1e6:g}M"
    if abs(value) >= 10_000:
        return f"{value / 1e3:g}k"
    return f"{value:,.0f}"


def _text(text: str) -> str:
    """User text for a figure: valid Unicode (:func:`~trainlab.rundir.printable`; the font renderer fails on a
    lone surrogate), with ``$`` escaped so that matplotlib does not read it as mathtext."""
    return printable(str(text)).replace("$", r"\$")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "metric"
