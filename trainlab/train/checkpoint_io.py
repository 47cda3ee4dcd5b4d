"""Checkpoints: written atomically, verified by SHA-256, loaded without unpickling arbitrary objects.

Layout inside a run directory::

    checkpoints/step_00001000.pt   torch.save of plain containers and tensors
    checkpoints/latest.json        {"file": ..., "step": ..., "sha256": ..., "bytes": ...}

Writing: the bytes go to a temporary file in the same directory, are fsync'ed, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows); only then is ``latest.json`` replaced the same way. A crash at
any moment leaves the previous checkpoint and its manifest intact. The two newest checkpoints are kept.

Loading: the manifest's SHA-256 must match the file, and ``torch.load(weights_only=True)`` refuses anything
but tensors and plain containers, so a truncated, corrupted or malicious file is reported, never loaded.

Distributed runs write the same single file from rank 0. Sharded strategies (zero1, fsdp) first consolidate
their state into full tensors (:mod:`trainlab.distributed.strategy`); every process then loads this file and keeps
its own part, which is why such a run can resume on another number of processes. PyTorch's sharded format
(``torch.distributed.checkpoint``) is not used: its ``FileSystemReader.read_metadata`` unpickles the
``.metadata`` file (torch 2.13), and trainlab never unpickles files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from trainlab.errors import CheckpointError  # noqa: F401  (defined there; imported from here too)

FORMAT_VERSION = 1
KEEP = 2
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
    atomic_write_bytes(path, text.encode())


def save(checkpoint_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    """Save ``payload`` (plain containers and tensors) as the checkpoint of ``step``; return its path."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "step": step, **payload}, buffer)
    data = buffer.getvalue()
    path = checkpoint_dir / f"step_{step:08d}.pt"
    atomic_write_bytes(path, data)
    manifest = {"file": path.name, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_text(checkpoint_dir / "latest.json", json.dumps(manifest, indent=1))
    for old in sorted(checkpoint_dir.glob("step_*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_manifest(checkpoint_dir: Path) -> dict[str, Any] | None:
    manifest_path = checkpoint_dir / "latest.json"
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        assert isinstance(manifest, dict) and {"file", "step", "sha256"} <= set(manifest)
    except (json.JSONDecodeError, AssertionError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest_path} is corrupted; cannot tell which checkpoint to resume") from None
    return manifest


def load(checkpoint_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the newest checkpoint after verifying its checksum; raise :class:`CheckpointError` if unsafe."""
    manifest = latest_manifest(checkpoint_dir)
    if manifest is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir} (no latest.json)")
    path = checkpoint_dir / str(manifest["file"])
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} named in latest.json is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated ({len(data)} bytes, sha256 mismatch); refusing to load it")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # a file that hashes right but will not load safely
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {str(err).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format")
    return payload
