"""One writer per run directory, and nothing lost or silently wrong when runs meet, are stopped or are killed.

Every test drives real ``trainlab run`` processes. They synchronise on the trainer's own output, never on
sleeps: a run launched without ``--quiet`` writes a progress line to stderr at each evaluation, and that line
comes after the run has taken its directory's lock and installed its signal handlers.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import trainlab
from trainlab.rundir import lock_run_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# The checkout under test, whichever trainlab is installed (the default-name test runs in another directory).
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TINY = ["workload=sparse_parity", "workload.n=10", "workload.n_train=64", "model.width=8", "eval_every=1000"]
ENDLESS = [*TINY, "steps=1000000000"]  # runs until a signal stops it
TIMEOUT = 300


def trainlab_cmd(*args):
    return [sys.executable, "-m", "trainlab", "run", *args, "--no-report"]


@pytest.fixture
def start():
    """``start(*args)`` launches ``trainlab run``; whatever a failing test leaves running is killed after it."""
    procs = []

    def launch(*args):
        procs.append(subprocess.Popen(trainlab_cmd(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_until_training(proc):
    """Read ``proc``'s stderr up to its first evaluation's progress line (by then it holds its directory and
    handles signals), or to its end; return what was read and whether it is training."""
    text = ""
    for line in proc.stderr:
        text += line
        if line.startswith("["):  # the progress line of an evaluation
            return text, True
    return text, False


def training(proc):
    text, ok = wait_until_training(proc)
    assert ok, text


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    return proc.communicate(timeout=TIMEOUT)


def refused(result, holder_pid):
    """The refusal of a second writer: exit 2, one line on stderr naming the holder."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another trainlab run" in lines[0], result.stderr
    assert f"pid {holder_pid} on " in lines[0] and ", since " in lines[0]


def raw_steps(path):
    """The step of every line of a JSONL file, in file order (duplicates kept)."""
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def finished_run(path, steps=20):
    """A completed run in ``path`` (trained in this process), with its final checkpoint."""
    return trainlab.run(None, [*TINY, f"steps={steps}"], out=path, quiet=True, report=False)


def test_a_second_run_into_the_same_directory_is_refused_naming_the_holder(tmp_path, start):
    out = tmp_path / "run"
    first = start(*ENDLESS, "--out", str(out))
    training(first)
    second = subprocess.run(trainlab_cmd(*TINY, "steps=20", "optimizer.lr=0.5", "--out", str(out), "--quiet"),
                            env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    refused(second, first.pid)
    _, err = stop(first)
    assert first.returncode == 128 + signal.SIGTERM, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len({row["lr"] for row in rows}) == 1 and rows[0]["lr"] != 0.5  # the first run's rows alone
    assert raw_steps(out / "metrics.jsonl") == sorted(set(raw_steps(out / "metrics.jsonl")))


def test_sigterm_exits_143_resumable_and_the_resume_clears_stale_temporary_files(tmp_path, start):
    out = tmp_path / "run"
    run = start(*ENDLESS, "--out", str(out))
    training(run)
    _, err = stop(run)
    assert run.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trainlab: interrupted, resumable: stopped by SIGTERM at step "), err
    assert last.endswith(f"continue with: trainlab run --resume {out}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped_at = summary["steps"]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == stopped_at
    # writers killed mid-write leave temporary files; a resume (holding the lock) deletes them, and only them
    stale = [out / ".summary.json.k2j4x9_q.tmp", out / "checkpoints" / ".step_00000010.pt.0abc1234.tmp",
             out / "plots" / ".loss.png.zz9_8y7x.tmp"]
    kept = [out / "notes.tmp", out / "checkpoints" / ".keep", out / "plots" / "mine.png.tmp"]
    (out / "plots").mkdir()
    for path in stale + kept:
        path.write_bytes(b"partial")
    resumed = subprocess.run(trainlab_cmd("--resume", str(out), f"steps={stopped_at + 10}", "--quiet"),
                             env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert raw_steps(out / "trace.jsonl") == list(range(stopped_at + 10))  # every step once


def test_two_concurrent_resumes_one_is_refused(tmp_path, start):
    out = finished_run(tmp_path / "run")
    runs = [start("--resume", str(out), "steps=1000000000") for _ in range(2)]
    # Reading each one's stderr ends either way: the winner logs an evaluation, the loser is refused and exits.
    (text_0, trains_0), (text_1, trains_1) = (wait_until_training(proc) for proc in runs)
    assert trains_0 != trains_1, "both resumed" if trains_0 else "neither resumed"
    winner, loser, text = (runs[0], runs[1], text_1) if trains_0 else (runs[1], runs[0], text_0)
    loser.wait(timeout=TIMEOUT)
    refused(subprocess.CompletedProcess(loser.args, loser.returncode, "", text), winner.pid)
    _, err = stop(winner)
    assert winner.returncode == 143, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_planned"] == 1000000000 and "steps: 1000000000" in (out / "config.yaml").read_text()
    assert raw_steps(out / "trace.jsonl") == list(range(summary["steps"]))  # no step twice
    assert raw_steps(out / "metrics.jsonl") == sorted(set(raw_steps(out / "metrics.jsonl")))


def test_a_run_killed_holding_the_lock_leaves_no_stale_lock(tmp_path, start):
    out = finished_run(tmp_path / "run")
    victim = start("--resume", str(out), "steps=1000000000")
    training(victim)
    stop(victim, signal.SIGKILL)
    assert (out / ".lock").exists()  # the file stays; its flock died with the process
    steps = json.loads((out / "checkpoints" / "latest.json").read_text())["step"] + 10
    resumed = subprocess.run(trainlab_cmd("--resume", str(out), f"steps={steps}", "--quiet"), env=ENV,
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == steps


def test_runs_started_together_with_one_name_get_a_directory_each(tmp_path):
    procs = [subprocess.Popen(trainlab_cmd(*TINY, "steps=20", "name=same", "--quiet"), cwd=tmp_path, env=ENV,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert dirs == ["same", "same-2", "same-3"]
    for name in dirs:
        assert raw_steps(tmp_path / "runs" / name / "trace.jsonl") == list(range(20))  # one run's steps each


@pytest.mark.parametrize("where, run_dir, name", [
    ([b"name=caf\xe9"], "runs/caf", "caf"),  # a name keeps ASCII letters, digits and _.+- only
    ([b"--out", b"caf\xe9"], b"caf\xe9", "caf\\xe9"),  # a directory is named as given; its bytes are escaped
])
def test_non_utf8_bytes_in_the_command_line_give_utf8_files(tmp_path, where, run_dir, name):
    argv = [os.fsencode(a) for a in [sys.executable, "-m", "trainlab", "run", *TINY, "steps=10"]]
    done = subprocess.run([*argv, *where, b"--quiet"], cwd=tmp_path, env=ENV, capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / os.fsdecode(run_dir)
    summary = json.loads((run_dir / "summary.json").read_bytes().decode("utf-8"))
    assert summary["name"] == name and summary["command"].endswith("caf\\xe9' --quiet")
    summary["command"].encode("utf-8")  # no lone surrogate
    (run_dir / "report.html").read_bytes().decode("utf-8")
    (run_dir / ".lock").read_bytes().decode("utf-8")


def test_under_torchrun_every_rank_learns_of_a_refusal(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with lock_run_dir(out, "the test"):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "trainlab", "run", *TINY, "steps=10", "--out", str(out), "--quiet",
                               "--no-report"], env={**ENV, "GLOO_SOCKET_IFNAME": "lo"}, capture_output=True,
                              text=True, timeout=TIMEOUT)
    assert done.returncode != 0
    assert done.stderr.count(f"trainlab: error: {out} is in use by another trainlab run (pid {os.getpid()}") == 2
