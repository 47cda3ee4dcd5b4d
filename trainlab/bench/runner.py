"""Run a list of trials: each is one ``trainlab.run`` into ``OUT/trials/<trial-id>/``, scored from its run directory.

- **Resume.** A trial whose run directory holds a ``summary.json`` with a final status (completed,
  reached_target, out_of_time, diverged) is not rerun: its record is read back from the directory. A
  directory without one (killed, interrupted, failed) is removed and the trial runs again from step 0, so
  every score comes from one uninterrupted clock.
- **Parallelism.** Trials run in ``workers`` processes (``concurrent.futures.ProcessPoolExecutor`` with
  ``spawn``), each with ``cores // workers`` torch threads unless ``threads`` says otherwise; ``workers=0`` runs them one by one in this
  process (tests, debugging). ``backend="ray"`` sends the same function to a Ray cluster (``RAY_ADDRESS``, or
  a local instance) when Ray is installed (``pip install 'trainlab[ray]'``); the results directory must then
  be on storage every node sees.
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
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from trainlab.bench.timing import TrialScore, finished, score_run
from trainlab.rundir.atomic import atomic_write_text
from trainlab.errors import BenchError  # noqa: F401  (defined there; imported from here too)

RESULTS_FILE = "results.jsonl"
TRIALS_DIR = "trials"
BACKENDS = ("process", "ray")


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
# The worker side


def execute(trial: Trial, trial_dir: str, threads: int) -> dict[str, Any]:
    """Train one trial (in a worker process or this one) and return ``{"wall": s}`` or ``{"error": text}``."""
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
    except Exception as err:  # noqa: BLE001 -- one trial's failure (a crashing optimizer) must not stop the bench
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    finally:
        sys.argv = argv
    return {"wall": time.perf_counter() - started}


def _init_worker(threads: int) -> None:
    import signal

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Ctrl-C reaches the whole process group; the driver decides (it sends SIGTERM, which a training run
    # handles by stopping after its step and saving). While training, the trainer installs its own handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()


def _exit_with_parent(period: float = 2.0) -> None:
    """A worker whose driver died (SIGKILL, a crash) is re-parented and would sit idle or finish a trial
    nobody records; it exits instead. The driver's resume reruns the trial."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os._exit(1)

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


def run_trials(trials: Sequence[Trial], out_dir: str | Path, *, workers: int | None = None,
               threads: int | None = None, backend: str = "process", progress: bool = True, label: str = "bench",
               executor: Callable[[Trial, str, int], dict[str, Any]] = execute) -> list[dict[str, Any]]:
    """Run the trials not finished yet; return the records of all of ``trials`` (in their order).

    ``threads`` per trial defaults to ``cores // workers``. On a machine other jobs load, use 1: two OpenMP
    threads contending with other processes made the suite's small models 10-100x slower per step here.
    """
    check_backend(backend)
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
        workers = default_workers() if workers is None else workers
        threads = threads or max(1, cores() // max(workers, 1))

        def finish(trial: Trial, outcome: dict[str, Any], running: int) -> None:
            rows[trial.id] = record(trial, trial_root / trial.id, out, outcome)
            _write_records(out, rows)
            meter.done += 1
            meter.ran += 1
            note = f"  [failed {trial.id}: {outcome['error']}]" if "error" in outcome else ""
            meter.show(running, note)

        meter.show(0)
        if backend == "ray":
            _run_ray(pending, trial_root, threads, executor, finish)
        elif workers == 0:
            for trial in pending:
                meter.show(1)
                finish(trial, executor(trial, str(trial_root / trial.id), threads), 0)
        else:
            _run_pool(pending, trial_root, workers, threads, executor, finish)
        meter.show(0, final=True)
    return [rows[t.id] for t in trials]


def _run_pool(pending: list[Trial], root: Path, workers: int, threads: int, executor: Callable,
              finish: Callable[[Trial, dict[str, Any], int], None]) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with _sigterm_as_interrupt(), ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures: dict[Future, Trial] = {}
        queue = list(pending)
        try:
            while queue or futures:
                while queue and len(futures) < workers:
                    trial = queue.pop(0)
                    futures[pool.submit(executor, trial, str(root / trial.id), threads)] = trial
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                finished_now = []
                for future in done:
                    trial = futures.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as err:  # noqa: BLE001 -- a worker died (killed, out of memory)
                        outcome = {"error": f"worker failed: {type(err).__name__}: {err}"}
                    finished_now.append((trial, outcome))
                while queue and len(futures) < workers:
                    trial = queue.pop(0)
                    futures[pool.submit(executor, trial, str(root / trial.id), threads)] = trial
                for trial, outcome in finished_now:
                    finish(trial, outcome, len(futures))
        except KeyboardInterrupt:
            import signal

            for process in list(getattr(pool, "_processes", {}).values()):  # the executor keeps no public list
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)  # a training run stops after its step and saves
            pool.shutdown(wait=True, cancel_futures=True)
            raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the driver (``kill``, a job scheduler) takes the Ctrl-C path: workers are told to stop after
    their step and save, and the pool is shut down, instead of the driver vanishing and leaving them behind."""
    import signal
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


def _run_ray(pending: list[Trial], root: Path, threads: int, executor: Callable,
             finish: Callable[[Trial, dict[str, Any], int], None]) -> None:
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=threads)(executor)
    refs = {remote.remote(trial, str(root / trial.id), threads): trial for trial in pending}
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
