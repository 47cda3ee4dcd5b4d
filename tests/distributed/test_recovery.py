"""Surviving a lost worker: torchrun --max-restarts restarts the workers, --auto-resume continues from the last
checkpoint, and the run ends exactly as an uninterrupted one (float64; the reference is one process)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainlab.train.run import RunError, run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
ARGS = ["workload.p=23", "steps=300", "eval_every=25", "checkpoint_every=25", "batch_size=50", "dtype=float64",
        "model.width=32"]


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _worker_of_rank(agent_pid, rank):
    """The pid of torchrun's child process whose RANK is ``rank`` (read from /proc; no psutil needed)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_worker_restarts_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.1", "-m", "trainlab", "run", *ARGS, "--out", str(out), "--auto-resume", "--quiet",
           "--no-report"]
    agent = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "checkpoints" / "latest.json"
    deadline, killed_after = time.time() + 180, None
    try:
        while time.time() < deadline and agent.poll() is None:
            if manifest.exists():
                step = json.loads(manifest.read_text())["step"]
                if step >= 75:
                    victim = _worker_of_rank(agent.pid, 1)
                    if victim is not None:
                        os.kill(victim, signal.SIGKILL)
                        killed_after = step
                        break
            time.sleep(0.02)
        _, err = agent.communicate(timeout=300)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert killed_after is not None and killed_after < 300, "the run finished before a worker could be killed"
    assert agent.returncode == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 300 and summary["world_size"] == 2
    # the reference: one uninterrupted process (DDP in float64 equals it to rounding)
    ref_dir = run(None, ARGS, out=tmp_path / "ref", quiet=True, report=False)
    got, ref = _rows(out), _rows(ref_dir)
    assert [r["step"] for r in got] == [r["step"] for r in ref]  # every row once: nothing repeated or lost
    for a, b in zip(got, ref):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), (a["step"], key)
    assert got[-1]["comm_bytes_total"] == 300 * summary["parameters"] * 8  # DDP's gradients, every step once


def test_auto_resume_refuses_another_config_and_needs_out(tmp_path):
    run(None, ["workload.p=11", "steps=4", "eval_every=2", "model.width=8"], out=tmp_path / "a", quiet=True,
        report=False)
    with pytest.raises(RunError, match="different model"):
        run(None, ["workload.p=11", "steps=4", "eval_every=2", "model.width=16"], out=tmp_path / "a", quiet=True,
            report=False, auto_resume=True)
    with pytest.raises(RunError, match="--auto-resume needs --out"):
        run(None, [], quiet=True, auto_resume=True)
    # same config and a larger step budget (a resumable key): continues from the final checkpoint
    run(None, ["workload.p=11", "steps=6", "eval_every=2", "model.width=8"], out=tmp_path / "a", quiet=True,
        report=False, auto_resume=True)
    assert [r["step"] for r in _rows(tmp_path / "a")] == [0, 2, 4, 6]
