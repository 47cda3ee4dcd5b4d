"""The one way reports reach the disk: HTML pages, markdown summaries and PNG figures.

Every file a report makes -- a run's ``report.html`` and ``plots/``, a comparison page, the bench's
leaderboard and page, a study's summary, the annealing law's plot -- is written by :func:`write_text` or
:func:`write_figure`, so three rules hold for all of them:

- **atomic** (:mod:`trainlab.rundir.atomic`): a kill, a full disk or an error while a page or a figure is being
  written leaves the previous file as it was, never an empty or half-written one;
- **valid UTF-8** (:func:`trainlab.rundir.printable`): a run name or a command that came from bytes that were
  not UTF-8 is written with those bytes as ``\\xNN`` escapes, instead of failing the write;
- **never over a run's records** (:func:`trainlab.rundir.check_output_path`): a report may replace a report,
  never a run's metrics, config, events, summary or checkpoints.

A write that fails raises an :class:`OSError` whose file name is the file that could not be written (not the
temporary file beside it), which the command line prints as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from trainlab.errors import one_line
from trainlab.rundir import check_output_path, printable
from trainlab.rundir.atomic import atomic_write_with

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_text", "write_figure"]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 (see the module's rules); returns the path."""
    data = printable(text).encode("utf-8")
    return _write(Path(path), lambda f: f.write(data))


def write_figure(fig: Figure, path: str | Path, **savefig: Any) -> Path:
    """Save ``fig`` to ``path`` with ``fig.savefig(file, **savefig)`` (see the module's rules); returns the path.

    ``savefig`` gets a file object, so it must name the ``format``.
    """
    return _write(Path(path), lambda f: fig.savefig(f, **savefig))


def _write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    check_output_path(path)
    try:
        atomic_write_with(path, write)
    except OSError as err:  # name the file the user asked for, not the temporary one (or none: a full disk)
        raise OSError(err.errno, err.strerror or one_line(err), str(path)) from err
    return path
