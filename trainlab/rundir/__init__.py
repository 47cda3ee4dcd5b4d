"""The run directory: the format a run's results are written in, and its one reader and writer.

    config.yaml      the resolved configuration (``trainlab run config.yaml`` reproduces the run)
    metrics.jsonl    one JSON object per evaluation (or probed step): step, time, wall, lr, train_*, val_*, ...
    trace.jsonl      one JSON object per optimizer step: step, lr, loss, grad_norm
    events.json      a list of detected events (memorized, generalized, diverged, ...)
    summary.json     status, final and best metrics, events, timings, versions, the exact command
    checkpoints/     see :mod:`trainlab.rundir.checkpoints`
    plots/, report.html   written by :mod:`trainlab.report`

The trainer writes through :class:`RunDir`; the report, the refined schedules, the annealing law, the bench and
the experiments read through it, so the rules below hold everywhere:

- ``*.jsonl`` rows are JSON objects with an integer ``step``, returned in step order; when a step repeats
  (rows logged again after a resume) the last row written wins. Only the *last* line may be torn -- a process
  killed while appending leaves it so -- and it is skipped (noted in :attr:`RunDir.notes`); a bad line anywhere
  else means the file was damaged and is an error.
- Files are strict JSON: a NaN is written as null, an infinity as ``"inf"`` / ``"-inf"``; the row readers turn
  those two strings back into floats.
- Every problem a user can cause (a path that holds no run, a missing file a reader needs, a file that is not
  UTF-8, invalid JSON or YAML, the wrong kind of value) is a :class:`~trainlab.errors.RunDirError` whose one-line
  message names the file and what is wrong.
- ``config.yaml``, ``events.json`` and ``summary.json`` are written atomically (:mod:`trainlab.rundir.atomic`);
  the ``*.jsonl`` files are appended to and cut back to a checkpoint on resume.
- One writer at a time: a run creating or resuming a directory holds its lock (:mod:`trainlab.rundir.lock`,
  the file ``.lock``) and, holding it, deletes the temporary files of writers killed mid-write. Readers do not
  lock.
- Text is valid UTF-8: what comes from a command line or a file name that is not (Python carries such bytes
  as lone surrogates) is written through :func:`printable`.
- A command's output file (``--out FILE``: reports, plots, exports) never replaces a run's records (the files
  above, ``checkpoints/`` and the lock): :func:`check_output_path` refuses them. Reports and plots are made
  again from the records; the records are made only by the run.

Importing this package does not import torch, numpy or matplotlib: ``trainlab report`` stays fast.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from trainlab.errors import RunDirError, quote_path
from trainlab.rundir.atomic import atomic_write_text, remove_stale_temporaries
from trainlab.rundir.lock import LOCK, RunDirBusyError, RunDirLock, lock_run_dir

__all__ = ["CONFIG", "METRICS", "TRACE", "EVENTS", "SUMMARY", "CHECKPOINTS", "MANIFEST", "PLOTS", "REPORT", "LOCK",
           "RunDir", "RunDirError", "RunDirBusyError", "RunDirLock", "check_output_path", "lock_run_dir", "new_run_dir",
           "printable", "timestamp", "versions"]

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TRACE = "trace.jsonl"
EVENTS = "events.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "latest.json"  # inside checkpoints/: which checkpoint is the newest, with its SHA-256
PLOTS = "plots"
REPORT = "report.html"


class RunDir:
    """The run directory at ``path``: writer methods for the trainer, reader methods for everyone else.

    Constructing one checks nothing (the trainer makes one before the directory exists, and a refined schedule
    only needs a ``trace.jsonl``); :meth:`open` checks that ``path`` holds a run.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.metrics_path = self.path / METRICS
        self.trace_path = self.path / TRACE
        self.events_path = self.path / EVENTS
        self.summary_path = self.path / SUMMARY
        self.checkpoints = self.path / CHECKPOINTS
        # What the readers skipped and why (a torn last line), one line each, for a report to show.
        self.notes: list[str] = []

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """The run directory at ``path``; a :class:`RunDirError` when ``path`` holds no run."""
        rd = cls(path)
        if not rd.path.exists():
            raise RunDirError(f"not a trainlab run directory: {rd.path} (does not exist)")
        if not rd.path.is_dir():
            raise RunDirError(f"not a trainlab run directory: {rd.path} (not a directory)")
        if not rd.has_run():
            raise RunDirError(f"not a trainlab run directory: {rd.path} (no {CONFIG} and no {METRICS})")
        return rd

    # ------------------------------------------------------------------------------------------- writing

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def has_run(self) -> bool:
        """Whether a run has started here (it saved its config or logged a row)."""
        return self.metrics_path.exists() or self.config_path.exists()

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files that writers killed mid-write left here, in ``checkpoints/`` and in ``plots/``.

        Call it holding the directory's lock, so that no run is writing. A ``trainlab report`` (which does not
        lock) writing its page or plots at that very moment loses that write and says so; run it again.
        """
        return [*remove_stale_temporaries(self.path), *remove_stale_temporaries(self.checkpoints),
                *remove_stale_temporaries(self.path / PLOTS)]

    def write_config(self, text: str) -> None:
        """Save the resolved configuration (YAML text) as ``config.yaml``."""
        atomic_write_text(self.config_path, text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        self.append_jsonl(self.metrics_path, [row])

    def append_trace(self, rows: list[dict[str, Any]]) -> None:
        self.append_jsonl(self.trace_path, rows)

    @staticmethod
    def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` to ``path``, one JSON object a line (non-finite numbers as in :func:`_strict`)."""
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(_strict(row)) + "\n" for row in rows))
            f.flush()

    def truncate_to_checkpoint(self, step: int) -> None:
        """Drop what was logged after the checkpoint of ``step`` a resumed run restarts from (and torn lines).

        metrics.jsonl keeps the evaluation row of ``step`` itself (written before that checkpoint);
        trace.jsonl keeps the steps taken before it (rows ``< step``).
        """
        for path, keep in ((self.metrics_path, lambda s: s <= step), (self.trace_path, lambda s: s < step)):
            if not path.exists():
                continue
            kept = [line for _, line, row, problem in _lines(path) if not problem and keep(row["step"])]
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as the JSON file ``name`` (``events.json``, ``summary.json``) atomically."""
        atomic_write_text(self.path / name, json.dumps(_strict(obj), indent=1, default=str) + "\n")

    # ------------------------------------------------------------------------------------------- reading

    def config(self, *, required: bool = False) -> dict[str, Any]:
        """The mapping in ``config.yaml``; ``{}`` when the file is missing, unless ``required``."""
        if not self.config_path.exists():
            if required:
                raise RunDirError(f"{self.config_path} not found (a run saves its resolved config there)")
            return {}
        from trainlab.config import parse_yaml  # the bounded YAML reader; only the readers of configs pay for it

        data = parse_yaml(_text(self.config_path), str(self.config_path), RunDirError)
        if not isinstance(data, dict):
            raise RunDirError(f"{self.config_path}: expected a mapping of config keys, found {_kind(data)}")
        return data

    def metrics(self, *, required: bool = False) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (see the module's rules); ``[]`` when missing, unless ``required``:
        then a missing file, or one with no complete row, is a :class:`RunDirError`."""
        rows = self._rows(self.metrics_path)
        if required and not rows:
            why = "empty, or no complete row" if self.metrics_path.exists() else "file not found"
            raise RunDirError(f"no metrics in {self.metrics_path} ({why})")
        return rows

    def trace(self, *, required: bool = False) -> list[dict[str, Any]]:
        """The rows of ``trace.jsonl`` (see the module's rules); ``[]`` when missing, unless ``required``:
        then a missing file, or one with no complete row, is a :class:`RunDirError`."""
        if required and not self.trace_path.exists():
            raise RunDirError(f"{self.trace_path} not found (runs record it unless trace=false)")
        rows = self._rows(self.trace_path)
        if required and not rows:
            raise RunDirError(f"{self.trace_path} holds 0 steps (empty, or no complete row)")
        return rows

    def events(self) -> list[dict[str, Any]]:
        """The events of ``events.json`` (``[]`` when missing), each an object with a ``name`` and a ``step``."""
        events = _json(self.events_path, list)
        for i, event in enumerate(events or []):
            if not (isinstance(event, dict) and isinstance(event.get("name"), str) and _is_int(event.get("step"))):
                raise RunDirError(f"{self.events_path}: entry {i + 1} is not an event (an object with a name and "
                                  "an integer step)")
        return events or []

    def summary(self) -> dict[str, Any] | None:
        """The object in ``summary.json``, as the run wrote it; ``None`` while the run has not ended."""
        return _json(self.summary_path, dict)

    def _rows(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        lines = list(_lines(path))
        by_step: dict[int, dict[str, Any]] = {}
        for k, (lineno, _, row, problem) in enumerate(lines):
            if problem:
                if k == len(lines) - 1:  # cut short by a killed process, or still being written
                    note = f"{path}: skipped unparsable last line {lineno}"
                    if note not in self.notes:  # once, however often the file is read
                        self.notes.append(note)
                    continue
                raise RunDirError(f"{path}: line {lineno} {problem}")
            by_step[row["step"]] = row
        return [by_step[s] for s in sorted(by_step)]


# ------------------------------------------------------------------------------------------------ files


def _lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any], str]]:
    """(line number, text, row, problem) for each non-blank line of a JSONL file. ``problem`` says why the
    line is not a row (not UTF-8, not JSON, not an object with an integer step); it is "" for a row."""
    for lineno, raw in enumerate(_bytes(path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield lineno, "", {}, "is not UTF-8 text"
            continue
        try:
            row = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            yield lineno, text, {}, "is not valid JSON"
            continue
        if isinstance(row, dict) and _is_int(row.get("step")):
            yield lineno, text, {k: _INFINITIES.get(v, v) if isinstance(v, str) else v for k, v in row.items()}, ""
        else:
            yield lineno, text, {}, "is not a JSON object with an integer step"


def _bytes(path: Path) -> bytes:
    """The whole file: a regular file only (a FIFO or a device put in a run directory would hang a reader)."""
    from trainlab.config import read_user_bytes

    return read_user_bytes(path, "file", RunDirError, None)


def _text(path: Path) -> str:
    try:
        return _bytes(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _json(path: Path, kind: type) -> Any:
    """The JSON value in ``path`` (``None`` when the file is missing); it must be of ``kind``."""
    if not path.exists():
        return None
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RecursionError:
        raise RunDirError(f"{path}: nested too deeply to be a trainlab file") from None
    if not isinstance(data, kind):
        raise RunDirError(f"{path}: expected {_kind(kind())}, found {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    """A JSON/YAML value's kind, for messages."""
    if value is None:
        return "nothing (empty or null)"
    if isinstance(value, dict):
        return "an object (mapping)"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r:.40})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strict(value: Any) -> Any:
    """``value`` with its non-finite floats as strict JSON has them: NaN as null, infinities as ``"inf"`` and
    ``"-inf"`` (which :meth:`RunDir.metrics` and :meth:`RunDir.trace` read back as floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


_INFINITIES = {"inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------------------------- outputs

# What only the run itself writes; everything else in a run directory (report.html, plots/, an export) is made
# again from these.
RECORDS = (CONFIG, METRICS, TRACE, EVENTS, SUMMARY, CHECKPOINTS, LOCK)


def check_output_path(path: str | Path) -> None:
    """Refuse ``path`` as a command's output file when writing it would replace a run's record: one of
    :data:`RECORDS` of a run directory, or anything inside its ``checkpoints/``. A :class:`RunDirError` names
    the file and the run.

    The path is resolved first (symbolic links, ``..``), since the bytes go where it resolves to.
    """
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links (RuntimeError before 3.13): writing fails on its own
        return
    for record in (target, *target.parents):  # the file itself, or a checkpoints/ it would land in
        if record.name in RECORDS and RunDir(record.parent).has_run():
            what = f"the run's {record.name}" if record == target else f"inside the run's {record.name}/"
            raise RunDirError(f"refusing to write {quote_path(path)}: it is {what} in {quote_path(record.parent)}; "
                              "choose another output file")


# ------------------------------------------------------------------------------------------ naming runs


def new_run_dir(root: Path, name: str) -> Path:
    """Create a fresh directory ``root/name`` (``-2``, ``-3``... appended if taken) and return it.

    ``name`` keeps only ASCII letters, digits and ``_.+-``. Each candidate is made with one ``mkdir``, which
    fails if the directory exists, so runs started in the same second with the same name get a directory each
    (checking first and creating later let two of them share one).
    """
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-") or "run"
    root.mkdir(parents=True, exist_ok=True)
    path, k = root / safe, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1
            path = root / f"{safe}-{k}"


def printable(text: str) -> str:
    """``text`` as valid Unicode, for the files trainlab writes and the lines it prints.

    A command-line argument or file name whose bytes are not UTF-8 reaches Python with each such byte as a
    lone surrogate (PEP 383), which no UTF-8 file can hold: such bytes become ``\\xNN`` (``name=caf\\xe9``).
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def versions() -> dict[str, str]:
    """The versions a run records in its summary (torch and numpy are imported here, not with this package)."""
    import numpy
    import torch

    import trainlab

    return {
        "trainlab": trainlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
