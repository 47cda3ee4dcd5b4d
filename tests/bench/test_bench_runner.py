"""Resume: finished trials are never rerun, unfinished ones are; also after SIGKILL of a whole bench."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bench_testing import TINY_PARITY, register_tiny

from trainlab.bench import plan, runner
from trainlab.bench.submission import parse
from trainlab.config import ConfigError

TESTS = Path(__file__).parent


def _trials():
    sub = parse("adamw optimizer.lr=1e-2")
    return [plan.bench_trial(TINY_PARITY, sub, ruleset="external", study=s, index=0, seed=s, hyperparameters={},
                             suite="test") for s in range(3)]


@pytest.mark.slow
def test_finished_trials_are_not_rerun(tmp_path):
    trials, calls = _trials(), []

    def counting(trial, trial_dir, threads):
        calls.append(trial.id)
        return runner.execute(trial, trial_dir, threads)

    rows = runner.run_trials(trials, tmp_path, workers=0, executor=counting, progress=False)
    assert calls == [t.id for t in trials] and all(r["score"]["reached"] for r in rows)
    dirs = [tmp_path / "trials" / t.id for t in trials]
    kept = (dirs[0] / "summary.json").stat().st_mtime_ns
    (dirs[1] / "summary.json").unlink()  # killed before it finished
    summary = json.loads((dirs[2] / "summary.json").read_text())
    (dirs[2] / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))  # Ctrl-C'd
    calls.clear()
    rows = runner.run_trials(trials, tmp_path, workers=0, executor=counting, progress=False)
    assert calls == [trials[1].id, trials[2].id]
    assert (dirs[0] / "summary.json").stat().st_mtime_ns == kept
    assert [r["id"] for r in rows] == [t.id for t in trials] and all(r["score"]["reached"] for r in rows)
    assert len(runner.load_records(tmp_path)) == 3


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from bench_testing import register_tiny
register_tiny()
from trainlab.bench.bench import run_bench
if __name__ == "__main__":  # worker processes are spawned: they import this file
    run_bench(["tiny"], ["adamw optimizer.lr=1e-2"], baseline="sgd optimizer.lr=0.1 optimizer.momentum=0.9 name=sgdm",
              seeds=2, workers=1, out={out!r}, heldout=False, progress=False)
"""


@pytest.mark.slow
def test_bench_killed_midway_resumes_without_rerunning_finished_trials(tmp_path):
    out = tmp_path / "bench"
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def summaries():
        return sorted((out / "trials").glob("*/summary.json"))

    deadline = time.monotonic() + 120
    try:
        while len(summaries()) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the bench and its worker: the process group this test started
        proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in summaries()}
    assert 3 <= len(done) < 8, proc.stderr.read().decode()[-2000:]

    register_tiny()
    from trainlab.bench.bench import run_bench

    result = run_bench(["tiny"], ["adamw optimizer.lr=1e-2"], baseline="sgd optimizer.lr=0.1 optimizer.momentum=0.9 "
                       "name=sgdm", seeds=2, workers=0, out=out, heldout=False, progress=False, resume=True)
    after = {p.parent.name: p.stat().st_mtime_ns for p in summaries()}
    assert len(after) == 8
    assert all(after[name] == mtime for name, mtime in done.items())  # finished before the kill: kept as they were
    records = runner.load_records(out)
    assert len(records) == 8 and {r["submission"] for r in records} == {"sgdm", "adamw_optimizer.lr=1e-2"}
    assert (result.out / "leaderboard.md").is_file()


def test_base_trials_interleave_submissions_so_load_drift_hits_all_alike():
    from trainlab.bench import plan, submission, suite

    workloads = [suite.get("mnist1d_mlp"), suite.get("sparse_parity")]
    subs = [submission.parse("adamw"), submission.parse("lion")]
    trials = plan.base_trials(workloads, subs, ruleset="external", seeds=2, studies=2, trials=1, suite="small")
    order = [(t.meta["submission"], t.meta["workload"], t.meta["seed"]) for t in trials]
    assert len(order) == len(set(order)) == 2 * 2 * 2
    assert [o[0] for o in order] == ["adamw", "lion"] * 4  # the submissions alternate
    assert order[0][1:] == order[1][1:]  # and each pair is the same workload and seed


def _children(pid):
    try:
        return {int(c) for task in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{task}/children").read().split()}
    except FileNotFoundError:
        return set()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads worker pids from /proc (Linux)")
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_bench_workers_do_not_outlive_their_driver(tmp_path, how):
    out = tmp_path / "bench"
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), out=str(out))))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers = set()
        while not any((out / "trials").glob("*/metrics.jsonl")) and time.monotonic() < deadline:
            workers |= _children(proc.pid)
            time.sleep(0.05)
        workers |= _children(proc.pid)
        assert workers, "no worker process was seen"
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)  # the driver only
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], f"workers outlived the driver ({how})"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


HANGS = """
import subprocess, sys, threading
import torch

HYPERPARAMETERS = {"lr": 0.05}

def make_optimizer(params, hyperparameters):
    if hyperparameters["lr"] == 0.5:  # this trial never returns, and leaves a process of its own behind
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(PIDFILE, "w") as f:
            f.write(str(child.pid))
        threading.Event().wait()
    return torch.optim.SGD(params, lr=hyperparameters["lr"])
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads process states from /proc (Linux)")
def test_a_hung_trial_is_killed_with_its_process_group_at_its_wall_clock_limit_and_the_rest_run(tmp_path,
                                                                                                 monkeypatch):
    pidfile = tmp_path / "child.pid"
    file = tmp_path / "hangs.py"
    file.write_text(f"PIDFILE = {str(pidfile)!r}\n" + HANGS)
    sub = parse(str(file))
    trials = [plan.bench_trial(TINY_PARITY, sub, ruleset="external", study=0, index=i, seed=0,
                               hyperparameters={"optimizer.lr": lr}, suite="test") for i, lr in enumerate((0.05, 0.5, 0.1))]
    hung = trials[1].id
    # Only the hung trial gets a limit, so the others never race a clock; 20 s is ample to reach make_optimizer.
    monkeypatch.setattr(runner, "wall_clock_limit", lambda trial, timeout=None: 20.0 if trial.id == hung else None)
    rows = runner.run_trials(trials, tmp_path / "bench", workers=2, threads=1, progress=False)
    assert [r.get("error") for r in rows] == [None, "wall-clock limit: stopped after 20 s, process group killed", None]
    assert rows[0]["score"]["status"] != "missing" and rows[2]["score"]["status"] != "missing"
    assert rows[1]["score"]["status"] == "missing"  # no summary: a resumed bench runs it again
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the hung trial's own child process outlived the kill"


def test_wall_clock_limits_and_their_refusals():
    trial = plan.bench_trial(TINY_PARITY, parse("adamw"), ruleset="external", study=0, index=0, seed=0,
                             hyperparameters={}, suite="test")
    assert runner.wall_clock_limit(trial) == 4 * TINY_PARITY.time_budget + 120
    assert runner.wall_clock_limit(trial, 7.5) == 7.5
    assert runner.wall_clock_limit(runner.Trial("study", ("steps=10",))) is None  # no time budget, no limit
    for timeout, workers, start in [(0, 1, "--trial-timeout: must be a positive number"),
                                    (float("inf"), 1, "--trial-timeout: must be a positive number"),
                                    (10, 0, "--trial-timeout: needs trial processes")]:
        with pytest.raises(ConfigError) as err:
            runner.check_trial_timeout(timeout, workers)
        assert str(err.value).startswith(start) and "\n" not in str(err.value)
    runner.check_trial_timeout(None, 0)
