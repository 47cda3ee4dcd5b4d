"""Axis labels of the training-curve plots stay readable and inside the figure.

A loss that moves within less than a decade gets a log y-axis with at most one power of ten in view; matplotlib
then labels the ticks between the powers in scientific notation (``1.2×10^0``), and those wide labels pushed the
axis label off the fixed left margin.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainlab.report import load_run
from trainlab.report.plots import _run_figure, _save


def short_log_run(tmp_path, low: float, high: float):
    """A run whose losses fall from ``high`` to ``low``: both curves on one short log range."""
    steps = np.arange(0, 1001, 50)
    loss = np.geomspace(high, low, steps.size)
    rows = [{"step": int(s), "train_loss": float(v), "val_loss": float(v) * 1.01} for s, v in zip(steps, loss)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_run(tmp_path)


def labelled_y_ticks(ax) -> list:
    """The y tick labels (major and minor) with a text, inside the axis' view."""
    low, high = sorted(ax.get_ylim())
    ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
    return [t.label1 for t in ticks if t.label1.get_text() and low <= t.get_loc() <= high]


@pytest.mark.parametrize("low, high", [(0.3, 0.8), (1.2, 2.5), (2.1e-3, 4.5e-3), (2e-5, 3e-5), (0.3, 4.0)])
def test_short_log_axis_has_plain_labels_inside_the_figure(tmp_path, low, high):
    fig = _run_figure(short_log_run(tmp_path, low, high), "loss", logx=False)
    _save(fig, tmp_path / "loss.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = labelled_y_ticks(ax)
    texts = [label.get_text() for label in labels]
    assert len(labels) >= 2, texts
    assert not any("$" in text for text in texts), texts  # 0.3, not the mathtext 3×10^{-1}
    renderer = fig.canvas.get_renderer()
    for text in [*labels, ax.yaxis.label]:  # nothing cut by the figure's left edge
        assert text.get_window_extent(renderer).x0 >= 0, text.get_text()


def test_long_log_axis_keeps_powers_of_ten(tmp_path):
    fig = _run_figure(short_log_run(tmp_path, 1e-6, 2.3), "loss", logx=False)
    _save(fig, tmp_path / "loss.png")
    texts = [label.get_text() for label in labelled_y_ticks(fig.axes[0])]
    assert len(texts) >= 3 and all("10^" in text for text in texts), texts
