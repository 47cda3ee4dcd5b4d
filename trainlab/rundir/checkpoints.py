"""Checkpoints: written atomically, verified by SHA-256, loaded without unpickling arbitrary objects.

Layout inside a run directory::

    checkpoints/step_00001000.pt   torch.save of plain containers and tensors
    checkpoints/latest.json        {"file": ..., "step": ..., "sha256": ..., "bytes": ...}

Writing: each file is written with :func:`~trainlab.rundir.atomic.atomic_write_bytes` (temporary file, fsync,
rename); only then is ``latest.json`` replaced the same way. A crash at any moment leaves the previous checkpoint
and its manifest intact. The ``KEEP`` newest checkpoints are kept.

Loading: the manifest's SHA-256 must match the file, and ``torch.load(weights_only=True)`` refuses anything
but tensors and plain containers, so a truncated, corrupted or malicious file is reported, never loaded. What
the payload must hold is the trainer's business (:func:`trainlab.train.state.check_payload`): the loaded
:class:`Checkpoint` knows its file, so that check can name it.

The trainer never writes a checkpoint holding a NaN or inf (:func:`trainlab.train.state.prepare_checkpoint`), so
the newest file, which pruning always keeps, is the last finite state of a run that diverged.

Distributed runs write the same single file from rank 0. Sharded strategies (zero1, fsdp) first consolidate
their state into full tensors (:mod:`trainlab.distributed.strategy`); every process then loads this file and keeps
its own part, which is why such a run can resume on another number of processes. PyTorch's sharded format
(``torch.distributed.checkpoint``) is not used: its ``FileSystemReader.read_metadata`` unpickles the
``.metadata`` file (torch 2.13), and trainlab never unpickles files.

This is the one module of :mod:`trainlab.rundir` that imports torch; the rest stays light for ``trainlab report``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import CheckpointError, one_line
from trainlab.rundir import MANIFEST
from trainlab.rundir.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["FORMAT_VERSION", "KEEP", "MANIFEST", "Checkpoint", "CheckpointError", "save", "latest_manifest",
           "load"]

FORMAT_VERSION = 1
KEEP = 2


class Checkpoint(dict[str, Any]):
    """A loaded checkpoint's payload (a plain mapping) that also knows the file it came from, for messages."""

    def __init__(self, payload: dict[str, Any], path: Path) -> None:
        super().__init__(payload)
        self.path = path


def save(checkpoint_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    """Save ``payload`` (plain containers and tensors) as the checkpoint of ``step``; return its path."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "step": step, **payload}, buffer)
    data = buffer.getvalue()
    path = checkpoint_dir / f"step_{step:08d}.pt"
    atomic_write_bytes(path, data)
    manifest = {"file": path.name, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_text(checkpoint_dir / MANIFEST, json.dumps(manifest, indent=1))
    for old in sorted(checkpoint_dir.glob("step_*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_manifest(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The manifest of the newest checkpoint, ``None`` when there is none; a damaged one is a CheckpointError."""
    manifest_path = checkpoint_dir / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not {"file", "step", "sha256"} <= set(manifest):
        raise CheckpointError(f"{manifest_path} is corrupted; cannot tell which checkpoint to resume")
    return manifest


def load(checkpoint_dir: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load the newest checkpoint after verifying its checksum; raise :class:`CheckpointError` if unsafe."""
    manifest = latest_manifest(checkpoint_dir)
    if manifest is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir} (no {MANIFEST})")
    name = str(manifest["file"])
    if Path(name).name != name or not name.endswith(".pt"):  # only a file of this directory, never ../elsewhere
        raise CheckpointError(f"{checkpoint_dir / MANIFEST} names {name!r}, not a checkpoint file of {checkpoint_dir}")
    path = checkpoint_dir / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} named in {MANIFEST} is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated ({len(data)} bytes, sha256 mismatch); refusing to load it")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # a file that hashes right but will not load safely
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {one_line(err)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format")
    return Checkpoint(payload, path)
