"""The run-directory lock (one writer at a time, released by the OS when its holder dies) and the clean-up of
temporary files that killed writers leave. Other processes are real ones, synchronised on their output."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainlab.rundir import LOCK, RunDirBusyError, lock, lock_run_dir
from trainlab.rundir.atomic import atomic_write_text, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def busy_message(path):
    with pytest.raises(RunDirBusyError) as info:
        lock_run_dir(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def child():
    """``child(code)`` runs Python ``code`` in another process and returns it once it printed its first line."""
    procs = []

    def run(code):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=ENV, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield run
    for proc in procs:
        proc.kill()
        proc.communicate()


def test_a_second_holder_is_refused_with_one_line_naming_the_first(tmp_path):
    with lock_run_dir(tmp_path, "trainlab run steps=5"):
        message = busy_message(tmp_path)  # another open file of the same process counts as another writer
        assert message.startswith(f"{tmp_path} is in use by another trainlab run (pid {os.getpid()} on "
                                  f"{socket.gethostname()}, since ")
        assert "command trainlab run steps=5" in (tmp_path / LOCK).read_text()
    with lock_run_dir(tmp_path):  # released: free again
        pass


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path, child):
    holder = child(f"""
        from trainlab.rundir import lock_run_dir
        held = lock_run_dir({str(tmp_path)!r}, "the child")
        print("ready", flush=True)
        input()
    """)
    assert f"(pid {holder.pid} on " in busy_message(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with lock_run_dir(tmp_path):  # no stale lock: the OS released it with the process
        assert f"pid {os.getpid()}" in (tmp_path / LOCK).read_text()


def test_a_failed_start_removes_the_directory_it_made(tmp_path):
    made = tmp_path / "run"
    made.mkdir()
    lock_run_dir(made).release(remove_directory=True)
    assert not made.exists()
    made.mkdir()
    (made / "notes.txt").write_text("someone else's")
    lock_run_dir(made).release(remove_directory=True)
    assert sorted(p.name for p in made.iterdir()) == ["notes.txt"]  # the lock's files go; a directory in use stays


def test_without_flock_the_lock_is_an_exclusive_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HAVE_FLOCK", False)
    held = lock_run_dir(tmp_path)
    message = busy_message(tmp_path)
    assert f"(pid {os.getpid()} on " in message and message.endswith(f"delete {tmp_path / LOCK}")
    held.release()
    assert not (tmp_path / LOCK).exists()
    lock_run_dir(tmp_path).release(remove_directory=True)
    assert not tmp_path.exists()


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path, child):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    writer = child(f"""
        import os
        from pathlib import Path
        from trainlab.rundir import atomic

        def stall(*args):
            print("ready", flush=True)
            input()

        os.replace = stall  # killed after writing its temporary file, before the rename
        atomic.atomic_write_text(Path({str(target)!r}), "new")
    """)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (tmp_path / "notes.tmp").write_text("not ours")
    (tmp_path / ".lock").write_text("")
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p.name.startswith(".summary.json.")]
    assert len(left) == 1
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.tmp", "summary.json"]
    assert target.read_text() == "old"
    assert remove_stale_temporaries(tmp_path / "missing") == []
