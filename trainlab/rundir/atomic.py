"""Atomic file writes: a reader sees the old content or the new, never a mix or a half-written file.

The bytes go to a temporary file in the same directory, are fsync'ed, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows); the directory is fsync'ed too so that the rename survives a
power loss. Checkpoints, their manifest, ``summary.json``, ``events.json`` and ``config.yaml`` are written
this way, so a crash at any moment leaves the previous version intact.

A writer killed between creating its temporary file and the rename leaves that file behind
(``.NAME.XXXXXXXX.tmp``); :func:`remove_stale_temporaries` deletes such files when a run takes its directory.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

# The process's umask, read once (os.umask can only be read by setting it): the permissions open() would give.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# The names mkstemp gives the temporary files below: "." + the target's name + "." + 8 random characters + ".tmp".
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new content, never a mix."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """:func:`atomic_write_bytes` of what ``write(file)`` writes to the binary file object it is given: for
    writers that take a file rather than return bytes (matplotlib's ``savefig``). If ``write`` raises, ``path``
    keeps its previous content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that killed writers left in ``directory`` (not its subdirectories); return them.

    Safe only while no writer can be using ``directory``: a run calls it holding the directory's lock
    (:mod:`trainlab.rundir.lock`), since a live writer's temporary file looks just the same.
    """
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.iterdir() if _TEMPORARY.fullmatch(p.name) and p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
