"""Probe curves as PNG files (the values the trainer writes as ``<probe>/<key>`` in ``metrics.jsonl``).

- :func:`plot_probes`: for one run, one small-multiples figure per probe (``probe_<name>.png``, and a log-step
  variant ``probe_<name>_logx.png``): a panel per key, or per group of keys on a shared scale (per-layer keys
  such as ``weights/<parameter>`` share one panel, coloured by depth, with a legend of at most
  :data:`MAX_LEGEND_LINES` lines). Events that concern the probe are drawn as labelled vertical lines, as on
  the loss plots. Edge-of-stability panels carry their threshold: ``eos_ratio`` a line at 1, the top Hessian
  eigenvalue (and the update's sharpness) the curve 2/lr from each probed row's learning rate. Accuracies at
  several radii share one panel on a linear 0-1 scale: ``robustness``'s clean and ``adv_acc_eps*`` keys
  ("accuracy under attack"), ``certified``'s ``verified_acc_eps*``, marked with the ``robust`` event.
  ``info_plane`` also gets its information plane, ``probe_info_plane_plane.png`` (:func:`plot_info_plane`): per
  estimator, I(X;T) on x and I(T;Y) on y, one line per layer through the probed steps, points coloured by step.
- :func:`plot_compare_probes`: for several runs, one figure per probe key that more than one run recorded
  (:func:`shared_probe_keys` orders them, most telling first), the runs overlaid in their comparison colours.

Each probe's points are the rows that carry its keys (steps probed between evaluations included); a null value
(NaN/inf in the probe) is a gap. Like :mod:`trainlab.report.plots`, nothing here touches pyplot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainlab.report.plots import (
    DPI,
    RUN_COLORS,
    THRESHOLD_COLOR,
    _draw_events,
    _event_marks,
    _fit_legend,
    _new_figure,
    _run_labels,
    _safe,
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

__all__ = ["MAX_COMPARE_FIGURES", "plot_compare_probes", "plot_info_plane", "plot_probes", "probe_events",
           "shared_probe_keys"]

MAX_LEGEND_LINES = 8  # per-layer panels: label the first and last layers, colour the rest by depth
MAX_PANELS = 9  # keys beyond these share one last panel
MAX_COMPARE_FIGURES = 12  # comparison report: overlays of at most this many probe keys
MARKERS_UP_TO = 25  # points per line up to which each is marked (probes are often sparse)
LOG_Y_SPAN = 100.0  # a panel whose positive values span more than this factor gets a log y axis
TWO_OVER_LR = "2/lr"

# Events worth marking on a probe's figure besides memorized / generalized / diverged (see trainlab.train.events).
_COMMON_EVENTS = ("memorized", "generalized", "diverged")
_PROBE_EVENTS = {
    "weights": ("slingshot", "loss_spike"),
    "grad_alignment": ("slingshot",),
    "hessian": ("edge_of_stability", "loss_spike"),
    "hessian_trace": ("edge_of_stability",),
    "update_sharpness": ("edge_of_stability", "loss_spike"),
    "softmax_collapse": ("softmax_collapse",),
    "attention_entropy": ("entropy_collapse", "loss_spike"),
    "ntk": ("lazy_to_rich",),
    "rank": ("lazy_to_rich",),
    "margin": ("softmax_collapse",),
    "robustness": ("robust",),
    "certified": ("robust",),
}

# Keys drawn together on one panel (a shared scale says more than separate panels would).
_GROUPS = {
    "local_complexity": [("linear regions near train / val / random points", ["train", "val", "random"])],
    "softmax_collapse": [("fraction of the probe batch", ["fraction", "zero_loss"])],
    "margin": [("margin", ["min", "mean"]), ("normalised margin", ["normalized_min", "normalized_mean"])],
}
# Accuracy at several radii ε on one panel, clean first, then ε ascending: probe -> (title, clean key, prefix of
# the ``<prefix><ε:g>`` keys). The gap between the curves is the point (delayed robustness, certified vs clean).
_EPS_GROUPS = {
    "robustness": ("accuracy under attack (PGD)", "clean_acc", "adv_acc_eps"),
    "certified": ("verified accuracy (IBP)", "clean_acc", "verified_acc_eps"),
}
# Titles of single-key panels (default: the key).
_TITLES = {
    ("weights", "total"): "norm of all parameters",
    ("weights", "last_layer"): "last layer's norm (slingshot cycles)",
    ("grad_alignment", "global"): "cosine(gradient, weights)",
    ("attention_entropy", "min"): "lowest head entropy, any layer (nats)",
    ("ntk", "distance_from_init"): "NTK distance from step 0 (lazy -> rich)",
    ("ntk", "label_alignment"): "NTK alignment with the labels",
    ("rank", "mean"): "mean effective rank of W - W0",
    ("noise_scale", "b_simple"): "gradient noise scale B_simple",
    ("jacobian", "fro_norm"): "input Jacobian Frobenius norm",
    ("jacobian", "centroid_alignment"): "centroid alignment",
}
# Probes whose other keys are parameter names (one value per weight matrix): these scalars stand alone.
_PER_LAYER = {"weights": ("total", "last_layer"), "rank": ("mean",)}
# Comparison overlays: these keys first, when shared.
_PRIORITY = (
    "weights/last_layer", "weights/total", "hessian/eig1", "hessian/eos_ratio", "update_sharpness/eos_ratio",
    "hessian_trace/mean", "softmax_collapse/fraction", "softmax_collapse/zero_loss", "ntk/distance_from_init",
    "ntk/label_alignment", "attention_entropy/min", "local_complexity/train", "local_complexity/val",
    "local_complexity/random", "grad_alignment/global", "margin/normalized_min", "rank/mean", "jacobian/fro_norm",
    "jacobian/centroid_alignment", "noise_scale/b_simple", "data_diet/el2n_mean",
)  # fmt: skip
_LAYER_KEY = re.compile(r"^layer(\d+)_(.+)$")
# info_plane's keys: <estimator>/<I_XT or I_TY>/layer<i> (trainlab.probes.info_plane), in bits.
_INFO_KEY = re.compile(r"^(\w+)/(I_XT|I_TY)/layer(\d+)$")
_INFO_TITLES = {"I_XT": "I(X;T)", "I_TY": "I(T;Y)"}


@dataclass
class Panel:
    """One panel of a probe's figure: ``keys`` (without the probe prefix) drawn as lines."""

    title: str
    keys: list[str]
    per_layer: bool = False
    labels: list[str] = field(default_factory=list)  # legend text per key (default: the key)
    ratio_line: bool = False  # a horizontal line at 1 (edge of stability: sharpness * lr / 2 = 1)
    two_over_lr: bool = False  # the curve 2/lr from each row's lr (the sharpness GD cannot exceed stably)
    band: str | None = None  # a key holding the standard error of the (single) line, drawn as a band
    accuracy: bool = False  # fractions: a linear 0-1 axis (an attack's accuracy near 0 would make it log)


# ------------------------------------------------------------------------------------------- grouping


def probe_panels(probe: str, keys: Sequence[str]) -> list[Panel]:
    """How the keys of ``probe`` are laid out: one :class:`Panel` per key, or per group of keys."""
    keys = list(keys)
    panels: list[Panel] = []
    used: set[str] = set()

    def take(title: str, members: list[str], **kw: Any) -> None:
        members = [k for k in members if k in keys and k not in used]
        if members:
            used.update(members)
            panels.append(Panel(title, members, **kw))

    for title, members in _GROUPS.get(probe, []):
        take(title, members)
    if probe == "info_plane":  # one panel per estimator and quantity, a line per layer
        for (method, quantity), layers in _info_groups(keys).items():
            take(f"{_INFO_TITLES[quantity]} per layer, {method} bins (bits)",
                 [f"{method}/{quantity}/layer{i}" for i in layers], per_layer=True,
                 labels=[f"layer {i}" for i in layers])
    if probe in _EPS_GROUPS:
        title, clean, prefix = _EPS_GROUPS[probe]
        radii = sorted((k for k in keys if _radius(k, prefix) is not None), key=lambda k: _radius(k, prefix) or 0.0)
        members = ([clean] if clean in keys else []) + radii
        take(title, members, labels=["clean" if k == clean else f"eps {k[len(prefix):]}" for k in members],
             accuracy=True)
    eigs = sorted((k for k in keys if re.fullmatch(r"eig\d+", k)), key=lambda k: int(k[3:]))
    take("top Hessian eigenvalues; dashed: 2/lr" if len(eigs) > 1 else "sharpness (top eigenvalue); dashed: 2/lr",
         eigs, two_over_lr=True)
    if probe == "update_sharpness":
        take("sharpness along the update; dashed: 2/lr", ["value"], two_over_lr=True)
    if probe == "hessian_trace" and "mean" in keys:
        take("Hessian trace (band: ± standard error)", ["mean"], band="stderr" if "stderr" in keys else None)
        used.add("stderr")
    if probe == "hessian_trace":
        take("trace * lr / 2; line at 1", ["sgd_ratio"], ratio_line=True)
    take("sharpness * lr / 2 (edge of stability at 1)", ["eos_ratio"], ratio_line=True)

    # Per-layer keys: parameter names (weights/<param>, rank/<param>), and anything dotted like one.
    scalars = _PER_LAYER.get(probe)
    layered = [k for k in keys if k not in used and ((scalars is not None and k not in scalars) or "." in k)]
    # layer<N>_<stat> keys (attention entropy): one panel per statistic, a line per layer.
    by_stat: dict[str, list[tuple[int, str]]] = {}
    for k in keys:
        m = _LAYER_KEY.match(k)
        if m and k not in used and k not in layered:
            by_stat.setdefault(m.group(2), []).append((int(m.group(1)), k))
    per_stat = {key for members in by_stat.values() for _, key in members}
    singles = [k for k in keys if k not in used and k not in layered and k not in per_stat]
    for k in singles:
        take(_TITLES.get((probe, k), k.replace("_", " ")), [k])
    for stat, ranked in by_stat.items():
        ranked.sort()
        take(f"{stat.replace('_', ' ')} per layer", [k for _, k in ranked], per_layer=True,
             labels=[f"layer {i}" for i, _ in ranked])
    if layered:
        what = {"weights": "norm of each weight matrix", "rank": "effective rank of W - W0, each matrix"}
        take(what.get(probe, "per layer"), layered, per_layer=True, labels=[_layer_label(k) for k in layered])

    if len(panels) > MAX_PANELS:  # too many to show apart: the rest share one panel
        rest = [k for p in panels[MAX_PANELS - 1:] for k in p.keys]
        panels = panels[: MAX_PANELS - 1] + [Panel(f"{len(rest)} more keys", rest, per_layer=True)]
    return panels


def _radius(key: str, prefix: str) -> float | None:
    """ε of a key ``<prefix><ε:g>`` (``adv_acc_eps0.1`` -> 0.1), or None for another key."""
    if not key.startswith(prefix):
        return None
    try:
        return float(key[len(prefix):])
    except ValueError:
        return None


def _info_groups(keys: Sequence[str]) -> dict[tuple[str, str], list[int]]:
    """info_plane keys by (estimator, quantity): the layers, ascending."""
    out: dict[tuple[str, str], list[int]] = {}
    for k in keys:
        m = _INFO_KEY.match(k)
        if m:
            out.setdefault((m.group(1), m.group(2)), []).append(int(m.group(3)))
    return {key: sorted(layers) for key, layers in out.items()}


def _layer_label(name: str, limit: int = 26) -> str:
    name = name.removesuffix(".weight")
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1):]


def probe_events(run: Run, probe: str) -> list[tuple[str, float]]:
    """The (name, step) event marks of ``run`` that concern ``probe``."""
    wanted = set(_COMMON_EVENTS) | set(_PROBE_EVENTS.get(probe, ()))
    return [(name, step) for name, step in _event_marks(run) if name in wanted]


# ------------------------------------------------------------------------------------------ single run


def plot_probes(run: Run, out_dir: str | Path) -> list[Path]:
    """Write ``probe_<name>.png`` and ``probe_<name>_logx.png`` for each probe that ``run`` recorded, to
    ``out_dir``; returns the paths written (none when the run has no probe values)."""
    probes = run.probes
    if not probes:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: set[str] = set()
    for probe, keys in probes.items():
        stem = _unique(f"probe_{_safe(probe)}", stems)
        panels = probe_panels(probe, keys)
        marks = probe_events(run, probe)
        for logx in (False, True):
            file = out / f"{stem}{'_logx' if logx else ''}.png"
            _save(_probe_figure(run, probe, panels, marks, logx), file)
            written.append(file)
    if "info_plane" in probes:
        written += plot_info_plane(run, out)
    return written


def plot_info_plane(run: Run, out_dir: str | Path) -> list[Path]:
    """Write ``probe_info_plane_plane.png`` (Shwartz-Ziv & Tishby's information plane) when ``run`` recorded both
    I(X;T) and I(T;Y) of a layer; returns the paths written (none otherwise)."""
    groups = _info_groups(run.probes.get("info_plane", []))
    layers = {method: sorted(set(xt) & set(groups.get((method, "I_TY"), [])))
              for (method, quantity), xt in groups.items() if quantity == "I_XT"}
    layers = {method: ls for method, ls in layers.items() if ls}
    if not layers:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file = out / "probe_info_plane_plane.png"
    _save(_info_plane_figure(run, layers), file)
    return [file]


def _info_plane_figure(run: Run, layers: dict[str, list[int]]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * len(layers) + 1.2, 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.13, top=0.84, wspace=0.3)
    axes = fig.subplots(1, len(layers), squeeze=False).ravel()
    points: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for method, ls in layers.items():
        for i in ls:
            xt = run.series(f"info_plane/{method}/I_XT/layer{i}")
            ty = run.series(f"info_plane/{method}/I_TY/layer{i}")
            if xt is None or ty is None:
                continue
            # The probe writes both keys in one row; pair them by step all the same (a null leaves a gap).
            y_at = dict(zip(ty[0].tolist(), ty[1].tolist()))
            steps = np.array([s for s in xt[0].tolist() if s in y_at], dtype=np.float64)
            x = np.array([v for s, v in zip(xt[0].tolist(), xt[1].tolist()) if s in y_at], dtype=np.float64)
            y = np.array([y_at[s] for s in steps.tolist()], dtype=np.float64)
            keep = np.isfinite(x) & np.isfinite(y)
            points[(method, i)] = (steps[keep], x[keep], y[keep])
    every = [p[0] for p in points.values() if p[0].size]
    lo, hi = (float(min(s.min() for s in every)), float(max(s.max() for s in every))) if every else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    scatter = None
    for ax, (method, ls) in zip(axes, layers.items()):
        _style_axes(ax)
        for i in ls:
            steps, x, y = points.get((method, i), (np.empty(0),) * 3)
            if not steps.size:
                continue
            ax.plot(x, y, color="#9a9a9a", lw=0.9, zorder=1)  # the layer's path through training
            scatter = ax.scatter(x, y, c=steps, cmap="viridis", norm=norm, s=16, zorder=2, edgecolors="none")
            ax.annotate(f"layer {i}", (x[-1], y[-1]), xytext=(4, 2), textcoords="offset points", fontsize=7)
        ax.margins(x=0.14, y=0.08)  # room for the layer labels at the paths' ends
        ax.set_title(f"{_text(method)} bins", loc="left", fontsize=9)
        ax.set_xlabel("I(X;T) (bits)", fontsize=8)
        ax.set_ylabel("I(T;Y) (bits)", fontsize=8)
        ax.tick_params(which="both", labelsize=7.5)
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=list(axes), fraction=0.04, pad=0.02)
        bar.set_label("step", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{_text(run.name)}: information plane (probe info_plane)", x=0.01, ha="left", y=0.97, va="top",
                 fontsize=11)
    return fig


def _probe_figure(run: Run, probe: str, panels: list[Panel], marks: list[tuple[str, float]], logx: bool) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) else 3
    nrows = math.ceil(len(panels) / ncols)
    width = {1: 8.0, 2: 9.0, 3: 11.0}[ncols]
    height = (3.6 if nrows == 1 else 2.9 * nrows) + 0.5
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    top = 1.0 - 0.55 / height
    fig.subplots_adjust(left=0.08 if ncols > 1 else 0.09, right=0.98, bottom=0.5 / height + 0.04, top=top,
                        wspace=0.28, hspace=0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        _style_axes(ax)
        _draw_panel(ax, run, probe, panel, logx)
        _draw_events(ax, marks, logx, annotate=i == 0, fontsize=7.0, lw=1.2)  # labels in the first panel only
        if i // ncols == nrows - 1 or i + ncols >= len(panels):
            ax.set_xlabel("log step" if logx else "step", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{_text(run.name)}: probe {_text(probe)}{' (log step)' if logx else ''}", x=0.01, ha="left",
                 y=1.0 - 0.12 / height, va="top", fontsize=11)
    return fig


def _draw_panel(ax: Axes, run: Run, probe: str, panel: Panel, logx: bool) -> None:
    from matplotlib import colormaps

    ax.set_title(_text(panel.title), loc="left", fontsize=9)
    plotted: list[np.ndarray] = []
    references: list[np.ndarray] = []
    n = len(panel.keys)
    if panel.per_layer and n > 1:
        colors = [colormaps["viridis"](v) for v in np.linspace(0.0, 0.88, n)]
    else:
        colors = [RUN_COLORS[i % len(RUN_COLORS)] for i in range(n)]
    labels = panel.labels or [k.replace("_", " ") for k in panel.keys]
    shown = _legend_subset(n) if panel.per_layer else set(range(n))
    x_all: list[np.ndarray] = []
    for i, key in enumerate(panel.keys):
        xy = _xy(run, f"{probe}/{key}", logx)
        if xy is None:
            continue
        x, y = xy
        x_all.append(x)
        count = int(np.isfinite(y).sum())
        ax.plot(x, y, color=colors[i], lw=1.1 if panel.per_layer else 1.5, ms=2.5,
                marker="o" if count <= MARKERS_UP_TO else None,
                label=_text(labels[i]) if i in shown else None)
        plotted.append(y)
        if panel.band is not None and n == 1:
            band = _xy(run, f"{probe}/{panel.band}", logx)
            if band is not None and band[1].shape == y.shape:
                ax.fill_between(x, y - band[1], y + band[1], color=colors[i], alpha=0.2, lw=0)
    if panel.two_over_lr and x_all:
        ref = _two_over_lr(run, f"{probe}/{panel.keys[0]}", logx)
        if ref is not None:
            ax.plot(ref[0], ref[1], color=THRESHOLD_COLOR, ls="--", lw=1.0, label=TWO_OVER_LR)
            references.append(ref[1])
    if panel.ratio_line:
        ax.axhline(1.0, color=THRESHOLD_COLOR, ls="--", lw=1.0, label="1 (edge of stability)")
        references.append(np.array([1.0]))
    _scale(ax, plotted, references, logx)
    if panel.accuracy and plotted:
        ax.set_yscale("linear")
        ax.set_ylim(-0.03, 1.03)
    if panel.per_layer and n > len(shown):
        from matplotlib.lines import Line2D

        handles, texts = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="none"))
        texts.append(f"+{n - len(shown)} more (colour: depth)")
        ax.legend(handles, texts, fontsize=6.5, loc="best", frameon=True, framealpha=0.8, edgecolor="none")
    elif plotted and (n > 1 or references):
        ax.legend(fontsize=7, loc="best", frameon=True, framealpha=0.8, edgecolor="none")


def _legend_subset(n: int) -> set[int]:
    """Which of ``n`` per-layer lines get a legend entry: all up to the limit, else the first and last layers."""
    if n <= MAX_LEGEND_LINES:
        return set(range(n))
    half = MAX_LEGEND_LINES // 2
    return set(range(half)) | set(range(n - (MAX_LEGEND_LINES - half), n))


def _two_over_lr(run: Run, column: str, logx: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """2/lr at the rows that carry ``column`` (each row records the lr of its step)."""
    lr = run.column("lr")
    if lr is None:
        return None
    mask = run.carried(column) & run.carried("lr")
    x, rate = run.steps[mask].astype(np.float64), lr[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(np.isfinite(rate) & (rate > 0), 2.0 / rate, np.nan)
    if logx:
        keep = x > 0
        x, y = x[keep], y[keep]
    return (x, y) if np.isfinite(y).any() else None


# ---------------------------------------------------------------------------------------- several runs


def shared_probe_keys(runs: Sequence[Run]) -> list[str]:
    """Probe keys (``<probe>/<key>``) with a finite value in more than one of ``runs``: the most telling first
    (weight norms, sharpness, collapse, NTK, ...), then the other scalar keys, then per-layer keys."""
    counts: dict[str, int] = {}
    for run in runs:
        for probe, keys in run.probes.items():
            for key in keys:
                column = f"{probe}/{key}"
                values = run.column(column)
                if values is not None and np.isfinite(values).any():
                    counts[column] = counts.get(column, 0) + 1
    shared = [c for c, n in counts.items() if n > 1]
    priority = {key: i for i, key in enumerate(_PRIORITY)}

    def rank(column: str) -> tuple[int, int]:
        probe, _, key = column.partition("/")
        if column in priority:
            return 0, priority[column]
        layered = (probe in _PER_LAYER and key not in _PER_LAYER[probe]) or "." in key
        return (2 if layered else 1), 0

    return sorted(shared, key=rank)  # stable: first-appearance order within a rank


def plot_compare_probes(runs: Sequence[Run], out_dir: str | Path, keys: Sequence[str] | None = None) -> list[Path]:
    """One figure per probe key in ``keys`` (default: the first :data:`MAX_COMPARE_FIGURES` of
    :func:`shared_probe_keys`), overlaying the runs that recorded it; returns the paths written."""
    runs = list(runs)
    if keys is None:
        keys = shared_probe_keys(runs)[:MAX_COMPARE_FIGURES]
    if not keys:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = _run_labels(runs)
    colors = {id(r): RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(runs)}
    written: list[Path] = []
    stems: set[str] = set()
    for column in keys:
        file = out / f"{_unique('probe_' + _safe(column.replace('/', '__')), stems)}.png"
        _save(_compare_probe_figure(runs, column, labels, colors), file)
        written.append(file)
    return written


def _compare_probe_figure(runs: list[Run], column: str, labels: dict[int, str], colors: dict[int, str]) -> Figure:
    from matplotlib.lines import Line2D

    fig, ax = _new_figure()
    probe, _, key = column.partition("/")
    eos = key in ("eos_ratio", "sgd_ratio")
    curvature = (probe == "hessian" and re.fullmatch(r"eig\d+", key) is not None) or column == "update_sharpness/value"
    plotted: list[np.ndarray] = []
    references: list[np.ndarray] = []
    handles: list[Line2D] = []
    for run in runs:
        xy = _xy(run, column, False)
        if xy is None:
            continue
        color = colors[id(run)]
        x, y = xy
        ax.plot(x, y, color=color, lw=1.5, ms=2.5, marker="o" if np.isfinite(y).sum() <= MARKERS_UP_TO else None)
        plotted.append(y)
        handles.append(Line2D([], [], color=color, lw=2.0, label=labels[id(run)]))
        if curvature:
            ref = _two_over_lr(run, column, False)
            if ref is not None:
                ax.plot(ref[0], ref[1], color=color, ls="--", lw=0.9, alpha=0.8)
                references.append(ref[1])
    if curvature and references:
        handles.append(Line2D([], [], color="#333333", ls="--", lw=0.9, label="2/lr of each run"))
    if eos:
        ax.axhline(1.0, color=THRESHOLD_COLOR, ls=":", lw=1.0)
        references.append(np.array([1.0]))
        handles.append(Line2D([], [], color=THRESHOLD_COLOR, ls=":", label="1 (edge of stability)"))
    _scale(ax, plotted, references, False, small=False)
    ax.set_xlabel("step")
    ax.set_ylabel(_text(key.replace("_", " ")))
    ax.set_title(f"probe {_text(column)}: {len(plotted)} runs", loc="left", fontsize=11)
    if handles:
        _fit_legend(fig, ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                                   fontsize=9))
    return fig


# -------------------------------------------------------------------------------------------- helpers


def _scale(ax: Axes, plotted: list[np.ndarray], references: list[np.ndarray], logx: bool, *,
           small: bool = True) -> None:
    """Log x for the log-step variant; log y when the values (and reference lines) are positive and span more
    than :data:`LOG_Y_SPAN`; on a linear y axis a reference line far off the data is left off the scale."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if logx:  # ticks at 1, 2, 5 x 10^k written as plain steps: crowded minor labels read badly in small panels
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_step_tick))
    if small:
        ax.tick_params(which="both", labelsize=7.5)
    data = np.concatenate([y[np.isfinite(y)] for y in plotted]) if plotted else np.empty(0)
    if data.size == 0:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="#888888",
                fontsize=8)
        return
    refs = np.concatenate([r[np.isfinite(r)] for r in references]) if references else np.empty(0)
    both = np.concatenate([data, refs])
    if np.all(both > 0) and both.max() / both.min() > LOG_Y_SPAN:
        ax.set_yscale("log")
        return
    if refs.size:
        lo, hi = float(data.min()), float(data.max())
        span = max(hi - lo, 0.1 * max(abs(hi), abs(lo)), 1e-12)
        if refs.min() < lo - 3 * span or refs.max() > hi + 3 * span:
            ax.set_ylim(lo - 0.1 * span, hi + 0.1 * span)
            where = "above" if refs.min() > hi else "below" if refs.max() < lo else "outside"
            ax.text(0.99, 0.02, f"reference line {where} the range ({_short(float(np.median(refs)))})",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=6.5, color=THRESHOLD_COLOR)


def _unique(stem: str, taken: set[str]) -> str:
    out, i = stem, 2
    while out in taken:
        out, i = f"{stem}_{i}", i + 1
    taken.add(out)
    return out


def _short(value: float) -> str:
    return f"{value:.3g}"
