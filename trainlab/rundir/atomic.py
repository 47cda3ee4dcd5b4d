"""Atomic file writes: a reader sees the old content or the new, never a mix or a half-written file.

The bytes go to a temporary file in the same directory, are fsync'ed, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows); the directory is fsync'ed too so that the rename survives a
power loss. Checkpoints, their manifest, ``summary.json``, ``events.json`` and ``config.yaml`` are written
this way, so a crash at any moment leaves the previous version intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The process's umask, read once (os.umask can only be read by setting it): the permissions open() would give.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
