"""The live progress line keeps step, loss and ETA visible on narrow terminals.

The line used to put the live loss last, after the bar and every evaluation metric, and cut the line at the
terminal's width: at 120 columns or fewer the loss was the part cut off.
"""

from __future__ import annotations

import io

import pytest

from trainlab.train.progress import Progress

# an evaluation row as the trainer shows it (grokking: tiny train loss, long numbers)
METRICS = {"train_loss": 1.5612e-06, "train_acc": 1.0, "val_loss": 0.00013721, "val_acc": 0.9913}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def live_line(monkeypatch, columns: int) -> str:
    """The last line drawn on a terminal ``columns`` wide, after an evaluation and a training step."""
    monkeypatch.setenv("COLUMNS", str(columns))  # shutil.get_terminal_size reads it first
    term = Terminal()
    progress = Progress(3000, stream=term)
    progress._t0 -= 100.0  # started 100 s ago: about 30 step/s, a rate of realistic width
    progress.evaluated(2950, METRICS)
    progress._last_draw = 0.0  # redraw now, whatever the clock says
    progress.step(2951, loss=1.234e-05)
    return term.getvalue().rsplit("\r\x1b[2K", 1)[-1]


@pytest.mark.parametrize("columns", [80, 120])
def test_step_loss_and_eta_fit_a_narrow_terminal(monkeypatch, columns):
    line = live_line(monkeypatch, columns)
    assert len(line) < columns  # one column spare: a full line would wrap and break the \r redraw
    for part in ("2951/3000", "loss 1.234e-05", "ETA "):
        assert part in line, line
    assert "val_acc 0.9913" in line  # validation before training metrics, the bar and steps/s


def test_lower_priority_parts_go_first(monkeypatch):
    narrow, medium = live_line(monkeypatch, 80), live_line(monkeypatch, 120)
    assert "train_loss" not in narrow and "[" not in narrow
    assert "val_loss" in medium and "step/s" in medium


def test_wide_terminal_shows_everything(monkeypatch):
    line = live_line(monkeypatch, 200)
    for part in ("[", "2951/3000", "loss 1.234e-05", "ETA ", "step/s", "train_loss 1.561e-06", "val_acc 0.9913"):
        assert part in line, line


def test_log_lines_are_not_cut():
    log = io.StringIO()  # not a terminal: one full line per evaluation
    Progress(3000, stream=log).evaluated(2950, METRICS)
    assert log.getvalue().endswith("train_loss 1.561e-06  train_acc 1  val_loss 0.0001372  val_acc 0.9913\n")


def test_a_tiny_terminal_still_starts_with_the_step(monkeypatch):
    assert live_line(monkeypatch, 12).startswith("2951/3000")
