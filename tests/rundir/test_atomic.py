"""Atomic writes through a callback: a writer that fails, a full disk or a kill before the rename leaves the
previous file as it was, and what the callback writes is what the file holds."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from trainlab.rundir.atomic import atomic_write_bytes, atomic_write_with


def test_the_callback_writes_the_file(tmp_path):
    target = tmp_path / "sub" / "f.bin"  # the parent is made
    atomic_write_with(target, lambda f: (f.write(b"ab"), f.write(b"cd")))
    assert target.read_bytes() == b"abcd"


def test_a_writer_that_fails_half_way_leaves_the_previous_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")

    def full_disk(f):
        f.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_write_with(target, full_disk)
    assert failed.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]  # no temporary file left


def test_an_interrupt_before_the_rename_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


def test_a_kill_between_write_and_rename_leaves_the_previous_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")
    code = ("import os, signal, sys; from pathlib import Path; from trainlab.rundir import atomic; "
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
            "atomic.atomic_write_with(Path(sys.argv[1]), lambda f: f.write(b'new'))")
    done = subprocess.run([sys.executable, "-c", code, str(target)])
    assert done.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    atomic_write_with(target, lambda f: f.write(b"new"))  # the temporary file left behind is in nobody's way
    assert target.read_bytes() == b"new"
