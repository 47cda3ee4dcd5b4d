"""Checkpoints: atomic, checksummed, never unpickle arbitrary objects."""

import hashlib
import json
import os

import pytest
import torch

from trainlab.errors import CheckpointError
from trainlab.rundir import checkpoints
from trainlab.rundir.atomic import atomic_write_text


def payload():
    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "events": [{"name": "memorized", "step": 3}]}


def test_round_trip_and_keep_two(tmp_path):
    for step in (10, 20, 30):
        checkpoints.save(tmp_path, step, payload())
    loaded = checkpoints.load(tmp_path)
    assert loaded["step"] == 30 and torch.equal(loaded["model"]["w"], payload()["model"]["w"])
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000020.pt", "step_00000030.pt"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert checkpoints.latest_manifest(tmp_path)["file"] == "step_00000030.pt"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_is_reported(tmp_path, damage):
    path = checkpoints.save(tmp_path, 5, payload())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        checkpoints.load(tmp_path)


def test_pickled_code_is_refused_even_with_a_matching_checksum(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    checkpoints.save(tmp_path, 1, payload())
    path = tmp_path / "step_00000001.pt"
    torch.save({"format": 1, "step": 1, "x": Evil()}, path, pickle_protocol=2)
    manifest = json.loads((tmp_path / "latest.json").read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "latest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        checkpoints.load(tmp_path)


@pytest.mark.parametrize("manifest", ["{not json", "[1, 2]", '{"file": "step_00000001.pt"}', "\xff"])
def test_missing_and_broken_manifest(tmp_path, manifest):
    assert checkpoints.latest_manifest(tmp_path) is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoints.load(tmp_path)
    (tmp_path / "latest.json").write_text(manifest, encoding="latin-1")
    with pytest.raises(CheckpointError, match="latest.json is corrupted"):
        checkpoints.load(tmp_path)


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_write_respects_the_umask(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "x")
    (tmp_path / "g.txt").write_text("x")  # what open() gives
    assert (tmp_path / "f.txt").stat().st_mode == (tmp_path / "g.txt").stat().st_mode


def test_a_loaded_checkpoint_is_a_plain_mapping_that_knows_its_file(tmp_path):
    path = checkpoints.save(tmp_path, 7, payload())
    loaded = checkpoints.load(tmp_path)
    assert isinstance(loaded, dict) and loaded.path == path and loaded["step"] == 7
