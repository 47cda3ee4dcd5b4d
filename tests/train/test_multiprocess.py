"""Runs across processes: DDP under torchrun matches one process; SIGKILL + --resume matches no interruption;
SIGTERM stops with a checkpoint and exit status 143.

More on stopped, killed and concurrent runs: ``test_run_directory_exclusive.py``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trainlab_cmd(*args):
    return [sys.executable, "-m", "trainlab", "run", *args, "--quiet", "--no-report"]


def test_ddp_two_processes_match_one_process(tmp_path):
    args = ["workload.p=23", "steps=30", "eval_every=5", "batch_size=50", "dtype=float64", "model.width=32"]
    single = subprocess.run(trainlab_cmd(*args, "--out", str(tmp_path / "one")), env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "trainlab", "run", *args, "--out", str(tmp_path / "two"), "--quiet", "--no-report"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(0, 31, 5))
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-10, abs=1e-12), (a["step"], key)
    assert one[-1]["train_loss"] < one[0]["train_loss"]  # it trained: the match is not of two frozen models
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    args = ["workload.p=31", "steps=600", "eval_every=50", "checkpoint_every=50", "model.width=64"]
    reference = subprocess.run(trainlab_cmd(*args, "--out", str(tmp_path / "ref")), env=ENV, capture_output=True,
                               text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    victim = subprocess.Popen(trainlab_cmd(*args, "--out", str(tmp_path / "run")), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["step"] >= 150:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(manifest.read_text())["step"]
    assert 150 <= killed_at < 600, "the run finished before it could be killed"
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "trainlab", "run", "--resume", str(tmp_path / "run"), "--quiet",
                              "--no-report"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    got = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert got["final"][key] == ref["final"][key], key
    assert got["events"]["memorized"] == ref["events"]["memorized"]
    assert [r["step"] for r in metrics(tmp_path / "run")] == [r["step"] for r in metrics(tmp_path / "ref")]
    trace = [json.loads(line) for line in (tmp_path / "run" / "trace.jsonl").read_text().splitlines()]
    ref_trace = [json.loads(line) for line in (tmp_path / "ref" / "trace.jsonl").read_text().splitlines()]
    assert trace == ref_trace  # every step exactly once, same losses and gradient norms


def test_sigterm_checkpoints_and_resumes(tmp_path):
    args = ["workload.p=31", "steps=100000", "eval_every=100", "model.width=32"]
    proc = subprocess.Popen(trainlab_cmd(*args, "--out", str(tmp_path / "run")), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # stopped, not finished: the shell's 143
    assert "trainlab: interrupted, resumable: stopped by SIGTERM at step " in err
    assert f"continue with: trainlab run --resume {tmp_path / 'run'}" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    manifest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert manifest["step"] == summary["steps"] > 100


def test_a_torchrun_worker_leaves_through_os_exit_with_its_output_and_exit_code_intact():
    """`python -m trainlab` under torchrun (WORLD_SIZE > 1) skips the interpreter's teardown, where gloo's threads
    aborted 4 of 16 loaded two-process launches (SIGABRT after the run had ended): what it printed must still
    arrive (stdout to a pipe is block-buffered) and its exit code must be main()'s."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    env["WORLD_SIZE"] = "2"  # `list` never joins a process group: only the exit path is exercised
    listed = subprocess.run([sys.executable, "-m", "trainlab", "list", "workloads"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and "mnist1d" in listed.stdout and listed.stdout.endswith("\n")
    wrong = subprocess.run([sys.executable, "-m", "trainlab", "run", "no_such_key=1"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and "no_such_key" in wrong.stderr
