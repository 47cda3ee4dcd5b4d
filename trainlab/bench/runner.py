"""Run a list of trials: each is one ``trainlab.run`` into ``OUT/trials/<trial-id>/``, scored from its run directory.

- **Resume.** A trial whose run directory holds a ``summary.json`` with a final status (completed,
  reached_target, out_of_time, diverged) is not rerun: its record is read back from the directory. A
  directory without one (killed, interrupted, failed, past its wall-clock limit) is removed and the trial
  runs again from step 0, so every score comes from one uninterrupted clock.
- **Parallelism.** Up to ``workers`` trials run at once, each in a fresh ``spawn`` process of its own process
  group, with ``cores // workers`` torch threads unless ``threads`` says otherwise. A fresh process per trial
  (about 3 s of start-up on the project's 2-core CPU) means a submission's module state never carries over
  from one trial to the next, and one stuck trial can be killed alone. ``workers=0`` runs the trials one by
  one in this process (tests, debugging). ``backend="ray"`` sends the same per-trial process to a Ray cluster
  (``RAY_ADDRESS``, or a local instance) when Ray is installed (``pip install 'trainlab[ray]'``); the results
  directory must then be on storage every node sees.
- **Wall-clock limit.** A trial's time budget counts training only (evaluation, data building and start-up
  are outside it, and it is checked at evaluations), so a submission that never returns would hang the bench.
  Each trial process therefore gets :func:`wall_clock_limit` seconds (``4 x time budget + 120 s``, or
  ``trial_timeout``); past it, its whole process group is killed and the trial is recorded as failed with
  the error ``wall-clock limit: ...``, and the bench goes on. Trials without a time budget (studies, target
  setting) have no limit unless ``trial_timeout`` is given. ``workers=0`` trains in this process, which
  nothing can stop from the outside: it applies no limit, and refuses an explicit ``trial_timeout``.
- **Records.** ``OUT/results.jsonl`` holds one JSON object per trial (its metadata, overrides, target, budgets
  and score), rewritten as each trial finishes, so it always matches the run directories.
- **Progress.** One line on stderr: done/total, running, elapsed, ETA.

The runner knows nothing about submissions or suites: a study (an lr sweep, say) is a list of :class:`Trial`
with whatever ``meta`` it needs, run by :func:`run_trials`, then plotted from the records::

    sweep = []
    for lr in (1e-4, 1e-3, 1e-2):
        words = ("workload=charlm", "optimizer=adamw", f"optimizer.lr={lr}", "steps=500")
        sweep.append(Trial(trial_id("lr", f"{lr:g}", content=words), words, metric="val_loss", meta={"lr": lr}))
    rows = run_trials(sweep, "results/lr-sweep")   # resumable, parallel; rows[i]["score"]["best"] per lr

(:func:`trainlab.bench.report.write_page` and :func:`~trainlab.bench.report.table` make its page.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from trainlab.bench.timing import TrialScore, finished, score_run
from trainlab.rundir.atomic import atomic_write_text
from trainlab.errors import BenchError, ConfigError, one_line

RESULTS_FILE = "results.jsonl"
TRIALS_DIR = "trials"
BACKENDS = ("process", "ray")
# A trial's wall-clock limit: the time budget counts training only, so evaluation, data building and process
# start-up come on top. The committed leaderboard's 332 trials took at most 1.25x their time budget of wall
# time (on a loaded 2-core CPU); 4x + 120 s leaves room for a far slower machine and still ends a hung trial.
WALL_CLOCK_FACTOR = 4.0
WALL_CLOCK_STARTUP = 120.0  # seconds


@dataclass(frozen=True)
class Trial:
    """One training run to make. ``overrides`` are complete ``trainlab run`` key=value strings."""

    id: str
    overrides: tuple[str, ...]
    metric: str = "val_loss"
    higher_is_better: bool = False
    target: float | None = None  # None: no time-to-target score (studies, target setting)
    time_budget: float | None = None
    step_budget: int | None = None
    submission_file: str | None = None  # a Python-file submission, registered in the process that trains
    meta: dict[str, Any] = field(default_factory=dict)


def trial_id(*parts: str, content: Any) -> str:
    """A readable, filesystem-safe id that changes whenever ``content`` (the trial's definition) does."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:8]
    safe = "--".join("".join(c if c.isalnum() or c in "._+-" else "_" for c in p) for p in parts)
    return f"{safe}--{digest}"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return cores()


# ---------------------------------------------------------------------------------------------------------
# The worker side: a trial, and the process it runs in


def execute(trial: Trial, trial_dir: str, threads: int) -> dict[str, Any]:
    """Train one trial (in a trial process or this one) and return ``{"wall": s}`` or ``{"error": text}``."""
    import torch

    import trainlab

    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    argv = sys.argv
    sys.argv = ["trainlab-bench-trial"]  # a submission learns nothing from the command line
    try:
        if trial.submission_file:
            from trainlab.bench.submission import register_file

            register_file(trial.submission_file)
        trainlab.run(overrides=list(trial.overrides), out=trial_dir, quiet=True, report=False,
                     command=f"trainlab bench trial {trial.id}")
    except KeyboardInterrupt:
        raise
    # One trial's failure (a crashing optimizer, a submission calling sys.exit) must not stop the bench.
    except (Exception, SystemExit) as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {one_line(err)}"}
    finally:
        sys.argv = argv
    return {"wall": time.perf_counter() - started}


def wall_clock_limit(trial: Trial, timeout: float | None = None) -> float | None:
    """Seconds ``trial``'s process may run: ``timeout`` if given, else ``4 x time budget + 120 s``; None (no
    limit) for a trial without a time budget."""
    if timeout is not None:
        return timeout
    if trial.time_budget is None:
        return None
    return WALL_CLOCK_FACTOR * trial.time_budget + WALL_CLOCK_STARTUP


class ChildProcess:
    """``fn(*args)`` (a dict) computed in a fresh ``spawn`` process that leads a process group of its own.

    Its own group lets a wall-clock kill take whatever the call started too, and keeps Ctrl-C at the terminal
    to the driver, which decides (it sends SIGTERM: a training run stops after its step and saves).
    """

    def __init__(self, fn: Callable[..., dict[str, Any]], args: tuple, threads: int, limit: float | None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.pipe, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_child_main, args=(send, fn, args, threads), name="trainlab-trial")
        self.process.start()
        send.close()  # the child holds the only writer now: end of file on the pipe means it has exited
        self.limit = limit
        self.deadline = math.inf if limit is None else time.monotonic() + limit

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def poll(self) -> dict[str, Any] | None:
        """The result once there is one -- ``fn``'s, or ``{"error": ...}`` when the process died or ran past its
        limit (its process group is then killed) -- and None while it runs."""
        outcome = None
        if self.pipe.poll():
            with contextlib.suppress(EOFError):  # end of file: it exited without a result
                outcome = self.pipe.recv()
        elif time.monotonic() >= self.deadline:
            self._kill_group()
            outcome = {"error": f"wall-clock limit: stopped after {self.limit:g} s, process group killed"}
        else:
            return None
        self.process.join()
        self.pipe.close()
        return outcome or {"error": f"its process died ({_exit_reason(self.process.exitcode)})"}

    def stop(self) -> None:
        """Ask it to stop (SIGTERM: a training run stops after its step and saves), then wait for it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGTERM)
        self.process.join()

    def _kill_group(self) -> None:
        try:
            os.killpg(self._pid, signal.SIGKILL)
        except ProcessLookupError:  # not yet the leader of its group (still starting), or already gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    @property
    def _pid(self) -> int:
        assert self.process.pid is not None  # set by start()
        return self.process.pid


def call_in_process(fn: Callable[..., dict[str, Any]], args: tuple, *, threads: int = 1,
                    limit: float | None = None) -> dict[str, Any]:
    """``fn(*args)`` computed in a :class:`ChildProcess`, waiting for it (or for ``limit`` seconds)."""
    child = ChildProcess(fn, args, threads, limit)
    while (outcome := child.poll()) is None:
        wait([child.pipe], timeout=None if limit is None else child.remaining())
    return outcome


def _exit_reason(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _child_main(send: Connection, fn: Callable[..., dict[str, Any]], args: tuple, threads: int) -> None:
    """The body of a :class:`ChildProcess`: its own process group, the thread settings, ``fn``, the result sent
    back, then exit at once (threads a submission left running must not keep the process alive)."""
    os.setpgrp()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    _exit_with_parent()
    send.send(fn(*args))
    send.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_with_parent(period: float = 2.0) -> None:
    """A trial process whose driver died (SIGKILL, a crash) is re-parented and would finish a trial nobody
    records; it kills its process group (itself and whatever it started) instead. The driver's resume reruns
    the trial."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="trainlab-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------------------------------------------
# The driver side


def record(trial: Trial, trial_dir: Path, out_dir: Path, outcome: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results.jsonl row of ``trial``: metadata, definition and its score read from ``trial_dir``."""
    score = score_run(trial_dir, trial.metric, trial.target, trial.higher_is_better,
                      time_budget=trial.time_budget, step_budget=trial.step_budget)
    row = {"id": trial.id, **trial.meta, "overrides": list(trial.overrides), "metric": trial.metric,
           "higher_is_better": trial.higher_is_better, "target": trial.target, "time_budget": trial.time_budget,
           "step_budget": trial.step_budget, "submission_file": trial.submission_file,
           "run_dir": os.path.relpath(trial_dir, out_dir), "score": score.to_dict()}
    if outcome:
        row.update({k: v for k, v in outcome.items() if k in ("wall", "error")})
    return row


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_score(row: dict[str, Any]) -> TrialScore:
    return TrialScore.from_dict(row["score"])


class _Progress:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.done = self.reused = self.ran = 0
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def show(self, running: int, note: str = "", final: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        eta = "--" if self.ran == 0 else _clock(elapsed / self.ran * left)  # completions so far set the pace
        line = (f"{self.label}: {self.done}/{self.total} trials done ({self.reused} reused), {running} running, "
                f"{_clock(elapsed)} elapsed, ETA {eta if left else '0:00'}{note}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _write_records(out_dir: Path, rows: dict[str, dict[str, Any]]) -> None:
    atomic_write_text(out_dir / RESULTS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows.values()))


Job = Callable[[Trial], tuple[Callable[..., dict[str, Any]], tuple, float | None]]  # trial -> fn, args, limit


def trial_threads(threads: int | None, workers: int) -> int:
    """Torch threads per trial: ``threads`` if given, else the machine's cores shared among ``workers``."""
    return threads or max(1, cores() // max(workers, 1))


def run_trials(trials: Sequence[Trial], out_dir: str | Path, *, workers: int | None = None,
               threads: int | None = None, backend: str = "process", progress: bool = True, label: str = "bench",
               executor: Callable[[Trial, str, int], dict[str, Any]] = execute,
               trial_timeout: float | None = None) -> list[dict[str, Any]]:
    """Run the trials not finished yet; return the records of all of ``trials`` (in their order).

    ``threads`` per trial defaults to ``cores // workers``. On a machine other jobs load, use 1: two OpenMP
    threads contending with other processes made the suite's small models 10-100x slower per step here.
    ``trial_timeout`` (seconds) replaces every trial's :func:`wall_clock_limit`.
    """
    check_backend(backend)
    workers = default_workers() if workers is None else workers
    check_trial_timeout(trial_timeout, workers, backend)
    out = Path(out_dir)
    trial_root = out / TRIALS_DIR
    trial_root.mkdir(parents=True, exist_ok=True)
    rows = {r["id"]: r for r in load_records(out)}
    pending: list[Trial] = []
    for trial in trials:
        path = trial_root / trial.id
        if finished(path):
            old = rows.get(trial.id, {})
            rows[trial.id] = record(trial, path, out, {"wall": old["wall"]} if "wall" in old else None)
        else:
            if path.exists():
                shutil.rmtree(path)  # interrupted, killed or failed: start it over
            rows.pop(trial.id, None)
            pending.append(trial)
    meter = _Progress(len(trials), label, progress)
    meter.done = meter.reused = len(trials) - len(pending)
    _write_records(out, rows)
    if pending:
        threads = trial_threads(threads, workers)

        def finish(trial: Trial, outcome: dict[str, Any], running: int) -> None:
            rows[trial.id] = record(trial, trial_root / trial.id, out, outcome)
            _write_records(out, rows)
            meter.done += 1
            meter.ran += 1
            note = f"  [failed {trial.id}: {outcome['error']}]" if "error" in outcome else ""
            meter.show(running, note)

        def job(trial: Trial) -> tuple[Callable[..., dict[str, Any]], tuple, float | None]:
            return executor, (trial, str(trial_root / trial.id), threads), wall_clock_limit(trial, trial_timeout)

        meter.show(0)
        if backend == "ray":
            _run_ray(pending, job, threads, finish)
        elif workers == 0:
            for trial in pending:
                meter.show(1)
                finish(trial, executor(trial, str(trial_root / trial.id), threads), 0)
        else:
            _run_local(pending, job, workers, threads, finish)
        meter.show(0, final=True)
    return [rows[t.id] for t in trials]


def check_trial_timeout(timeout: float | None, workers: int, backend: str = "process") -> None:
    """Refuse a trial timeout that is not a positive number of seconds, or one that cannot be enforced."""
    if timeout is None:
        return
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError("--trial-timeout", f"must be a positive number of seconds, got {timeout!r}")
    if workers == 0 and backend == "process":
        raise ConfigError("--trial-timeout", "needs trial processes: with --workers 0 trials train in this "
                                             "process, which cannot be stopped from outside")


def _run_local(pending: list[Trial], job: Job, workers: int, threads: int,
               finish: Callable[[Trial, dict[str, Any], int], None]) -> None:
    """Up to ``workers`` trials at a time, each in a :class:`ChildProcess` with its wall-clock limit."""
    running: dict[ChildProcess, Trial] = {}
    queue = list(pending)

    def fill() -> None:
        while queue and len(running) < workers:
            trial = queue.pop(0)
            fn, args, limit = job(trial)
            running[ChildProcess(fn, args, threads, limit)] = trial

    with _sigterm_as_interrupt():
        try:
            while queue or running:
                fill()
                soonest = min(child.remaining() for child in running)
                wait([child.pipe for child in running], timeout=None if math.isinf(soonest) else soonest)
                ended = [(child, outcome) for child in list(running) if (outcome := child.poll()) is not None]
                finished_now = [(running.pop(child), outcome) for child, outcome in ended]
                fill()  # the next trials start before the records are written
                for trial, outcome in finished_now:
                    finish(trial, outcome, len(running))
        except KeyboardInterrupt:
            for child in running:
                child.stop()
            raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the driver (``kill``, a job scheduler) takes the Ctrl-C path: trial processes are told to stop
    after their step and save, and are waited for, instead of the driver vanishing and leaving them behind."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_backend(backend: str) -> None:
    """Refuse an unknown backend, or Ray when it is not installed, before anything is written."""
    if backend not in BACKENDS:
        raise BenchError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise BenchError("--backend ray needs Ray, which is not installed: pip install 'trainlab[ray]'")


def _call_in_process_positional(fn: Callable[..., dict[str, Any]], args: tuple, threads: int,
                                limit: float | None) -> dict[str, Any]:
    """:func:`call_in_process` with positional arguments: what Ray's typed ``remote()`` passes on."""
    return call_in_process(fn, args, threads=threads, limit=limit)


def _run_ray(pending: list[Trial], job: Job, threads: int,
             finish: Callable[[Trial, dict[str, Any], int], None]) -> None:
    """Each trial as a Ray task that runs it in a :class:`ChildProcess` (so its wall-clock limit holds there)."""
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=threads)(_call_in_process_positional)
    refs = {}
    for trial in pending:
        fn, args, limit = job(trial)
        refs[remote.remote(fn, args, threads, limit)] = trial
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            trial = refs.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # noqa: BLE001 -- a task failed on the cluster
                outcome = {"error": f"ray task failed: {type(err).__name__}: {err}"}
            finish(trial, outcome, len(refs))


def keep_records(out_dir: str | Path, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Drop from results.jsonl the rows of trials not in ``ids`` (a resumed bench whose plan changed)."""
    wanted = set(ids)
    rows = {r["id"]: r for r in load_records(out_dir) if r["id"] in wanted}
    _write_records(Path(out_dir), rows)
    return list(rows.values())
