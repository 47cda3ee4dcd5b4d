"""One writer per run directory: a run holds ``RUN/.lock`` while it trains; a second writer is refused.

Two runs writing one directory would interleave their metrics rows and leave a summary and a config that
disagree, and both would exit 0. So creating or resuming a run takes :func:`lock_run_dir` first, before any
slow set-up, and a second writer -- a run with the same ``--out``, a second ``--resume``, in any process --
gets a :class:`RunDirBusyError`: one line naming the holder's pid, host and start time.

The lock is an advisory ``fcntl.flock`` on ``RUN/.lock``. The operating system releases it when the holding
process ends, however it ends (exit, exception, SIGKILL), so a killed run never leaves a stale lock: an
immediate ``--resume``, or ``--auto-resume`` in the workers torchrun restarts, gets it. The file holds the
holder's pid, host, start time and command as text (for the refusal message and for a person); it is left in
place when the run ends, and its text only means something while someone holds the lock. Taking the lock and
writing that text happen under a second, momentary lock (``RUN/.lock.claim``), so a refused process never
names the previous holder. ``flock`` locks are not shared across machines on every network filesystem (NFS
before v4 may give each client its own lock).

Without ``fcntl`` (Windows) the lock is the file itself, created with ``O_EXCL`` and removed on release. That
cannot tell a dead holder from a live one: after a run is killed its directory stays refused until someone
deletes ``.lock`` (the message says so).

Readers -- ``trainlab report``, ``load_run``, the bench's scoring -- do not lock: every file a run rewrites is
replaced atomically, and a torn last row is skipped.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from trainlab.errors import RunDirError

try:
    from fcntl import LOCK_EX, LOCK_NB, flock
except ImportError:  # Windows
    HAVE_FLOCK = False
else:
    HAVE_FLOCK = True

__all__ = ["LOCK", "RunDirBusyError", "RunDirLock", "lock_run_dir"]

LOCK = ".lock"
CLAIM = ".lock.claim"  # held only while a process takes the lock and writes its name (see lock_run_dir)


class RunDirBusyError(RunDirError):
    """Another process holds the run directory (the message names it)."""


class RunDirLock:
    """This process's hold on a run directory; :meth:`release` (or leaving a ``with`` block) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path  # the lock file
        self._fd: int | None = fd

    def release(self, *, remove_directory: bool = False) -> None:
        """Let the directory go. ``remove_directory``: also delete the lock's files and then the directory if
        that leaves it empty (a start that failed before writing anything into a directory it made)."""
        if self._fd is None:
            return
        if HAVE_FLOCK:
            if remove_directory:
                self._remove(directory=True)  # still holding the lock: nobody starts in a directory about to go
            os.close(self._fd)  # closing the descriptor releases the flock
        else:
            os.close(self._fd)  # first: Windows deletes no open file
            self._remove(directory=remove_directory)  # an O_EXCL lock is the file itself
        self._fd = None

    def _remove(self, *, directory: bool) -> None:
        for name in (LOCK, CLAIM):
            self.path.with_name(name).unlink(missing_ok=True)
        if directory:
            try:
                self.path.parent.rmdir()  # only when empty: never what someone else put there
            except OSError:
                pass

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path, command: str = "") -> RunDirLock:
    """Take the (existing) directory ``run_dir`` for this process, recording ``command`` as the holder's;
    a :class:`RunDirBusyError` naming the holder when another process has it."""
    path = Path(run_dir) / LOCK
    holder = (f"pid {os.getpid()}\nhost {socket.gethostname()}\nsince {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              f"command {command}\n").encode("utf-8", "backslashreplace")
    if not HAVE_FLOCK:
        fd = _create_exclusive(path)
        _record(fd, holder)
        return RunDirLock(path, fd)
    # Taking the lock and writing the holder's name are one step for everyone who holds the claim, so a refused
    # process never reads the name of the previous holder (or none) while the new one is between the two.
    claim = _flocked(path.with_name(CLAIM), wait=True)
    try:
        fd = _flocked(path, wait=False)
        _record(fd, holder)
    finally:
        os.close(claim)
    return RunDirLock(path, fd)


def _record(fd: int, holder: bytes) -> None:
    os.ftruncate(fd, 0)
    os.write(fd, holder)


def _flocked(path: Path, *, wait: bool) -> int:
    """An open descriptor of ``path`` holding its exclusive flock; without ``wait``, :class:`RunDirBusyError`
    when another process holds it.

    The lock is taken again when the file was replaced meanwhile: a failed start that made the directory
    deletes the files before letting go (:meth:`RunDirLock.release`), and a lock on a deleted file would
    exclude nobody.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            flock(fd, LOCK_EX if wait else LOCK_EX | LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(path) from None
        except OSError as err:
            os.close(fd)
            raise RunDirError(f"{path}: cannot be locked ({err.strerror}); trainlab needs a filesystem with "
                              "file locks for its run directories") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _create_exclusive(path: Path) -> int:
    """The descriptor of a new ``path`` created with ``O_EXCL``, or :class:`RunDirBusyError` if it exists."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise _busy(path, stale_possible=True) from None


def _busy(path: Path, stale_possible: bool = False) -> RunDirBusyError:
    """The one-line refusal, naming the holder recorded in ``path``."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text("utf-8", "replace").splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
    except OSError:
        pass
    if "pid" in fields:
        holder = f"pid {fields['pid']} on {fields.get('host', '?')}, since {fields.get('since', '?')}"
    else:
        holder = "it is just starting"  # it took the lock and has not written its name yet
    stale = f"; if no such process is alive, delete {path}" if stale_possible else ""
    return RunDirBusyError(f"{path.parent} is in use by another trainlab run ({holder}); a run directory has one "
                           f"writer at a time: wait for that run to end, or use another directory{stale}")
