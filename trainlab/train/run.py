"""``trainlab run`` as a function: resolve the config, prepare the run directory, train, summarise, report."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from trainlab.config import ConfigError
from trainlab.distributed import env as dist_env
from trainlab.rundir import checkpoints as ckpt
from trainlab.rundir import summary as summarize
from trainlab.train.config import RESUMABLE_KEYS, RunConfig, for_resume, from_cli
from trainlab.train.loop import StopFlag, train_loop
from trainlab.train.state import TrainState, restore, save_checkpoint
from trainlab.train.training import Training, build_training
from trainlab.train.progress import Progress
from trainlab.train.runlog import RunLog
from trainlab.train.tensorboard import TensorBoardLog
from trainlab.train.tensorboard import require as require_tensorboard
from trainlab.rundir import RunDir, new_run_dir, timestamp, versions
from trainlab.errors import RunError  # noqa: F401  (defined there; imported from here too)


def run(
    config: RunConfig | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    runs_root: str | Path = "runs",
    command: str | None = None,
    report: bool = True,
    auto_resume: bool = False,
) -> Path:
    """Train one configuration and return its run directory.

    ``config`` is a :class:`RunConfig`, a YAML path, or None (the defaults); ``overrides`` are ``key=value``
    strings applied on top. ``resume`` continues the run in that directory from its newest checkpoint.

    ``auto_resume`` (``--auto-resume``, needs ``out``): when ``out`` already holds a run of the same
    configuration, continue it from its newest checkpoint instead of refusing (or start it afresh when it has
    no checkpoint yet). This is what makes ``torchrun --max-restarts=K ... trainlab run ... --out DIR
    --auto-resume`` survive a lost worker: torchrun restarts every worker with the same command, and they pick
    up the last checkpoint, losing at most ``checkpoint_every`` steps. A different configuration in ``out``
    (other than the keys a resume may change) is an error.
    Example::

        run_dir = trainlab.run(overrides=["workload=sparse_parity", "steps=500"], quiet=True)
    """
    if auto_resume and (out is None or resume is not None):
        raise RunError("--auto-resume needs --out DIR (the directory a restarted launch continues) and no --resume")
    if resume is not None:
        rd = RunDir(Path(resume))
        if not rd.config_path.is_file():
            raise RunError(f"cannot resume {rd.path}: it holds no trainlab run (no config.yaml)")
        try:
            cfg = for_resume(rd.config_path, overrides)
        except ConfigError as err:
            if err.key in RESUMABLE_KEYS or any(o.partition("=")[0].strip() == err.key for o in overrides):
                raise  # a mistake in this command's own overrides
            raise RunError(f"cannot resume {rd.path}: its config.yaml does not resolve ({err})") from None
    elif isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("", "pass overrides with a YAML path or None, not with a RunConfig")
        cfg = config
    else:
        cfg = from_cli(str(config) if config is not None else None, overrides)

    if cfg.train.tensorboard:
        require_tensorboard()
    try:
        env = dist_env.setup(cfg.train.device)
    except RuntimeError as err:
        raise RunError(str(err)) from None
    try:
        resuming = resume is not None
        if resume is None:
            rd = RunDir(Path(env.broadcast(str(output_dir(cfg, out, runs_root)) if env.is_main else None)))
            verdict = _auto_resume_verdict(cfg, rd) if auto_resume and env.is_main else None
            verdict = env.broadcast(verdict) if auto_resume else None
            if verdict is not None and verdict.startswith("error: "):
                raise RunError(verdict[len("error: "):])
            if verdict == "resume":
                resuming = True
            elif verdict == "fresh":
                if env.is_main:
                    rd.truncate_to_checkpoint(-1)  # rows of an attempt that never checkpointed
            elif rd.has_run():
                raise RunError(f"{rd.path} already holds a run; resume it with --resume {rd.path} (or --auto-resume), "
                               "or choose another --out")
        return _run(cfg, env, rd, resuming=resuming, quiet=quiet or not env.is_main,
                    command=command or _command(), report=report)
    finally:
        env.close()


def _auto_resume_verdict(cfg: RunConfig, rd: RunDir) -> str:
    """``--auto-resume`` on the main process: "new", "fresh" (a run without a checkpoint), "resume", or "error: ..."."""
    if not rd.has_run():
        return "new"
    saved_path = rd.config_path
    if not saved_path.is_file():
        return "fresh"
    try:
        saved = from_cli(str(saved_path), []).to_plain()
    except ConfigError as err:
        return f"error: --auto-resume: the config saved in {rd.path} no longer resolves ({err})"
    new = cfg.to_plain()
    for key in sorted(set(saved) | set(new)):
        if key not in RESUMABLE_KEYS and saved.get(key) != new.get(key):
            return (f"error: --auto-resume: {rd.path} holds a run with a different {key} ({saved.get(key)!r}, not "
                    f"{new.get(key)!r}); choose another --out")
    return "resume" if ckpt.latest_manifest(rd.checkpoints) is not None else "fresh"


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(shlex.quote(a) for a in argv)


def output_dir(cfg: RunConfig, out: str | Path | None, runs_root: str | Path) -> Path:
    """The run directory: ``out``, or a new ``runs_root/NAME`` (NAME: ``name`` or workload-optimizer-time)."""
    if out is not None:
        return Path(out)
    name = cfg.train.name or f"{cfg.workload.name}-{cfg.optimizer.name}-{timestamp()}"
    return new_run_dir(Path(runs_root), name)


def _run(cfg: RunConfig, env: Any, rd: RunDir, *, resuming: bool, quiet: bool, command: str, report: bool) -> Path:
    training = build_training(cfg, env)
    try:
        return _train(training, rd, resuming=resuming, quiet=quiet, command=command, report=report)
    finally:
        training.strategy.finish()


def _start(t: Training, rd: RunDir, resuming: bool) -> TrainState:
    """The state to train from: fresh, or the run directory's newest checkpoint (logs cut back to it)."""
    if not resuming:
        return TrainState.fresh(t)
    try:  # every process reads the (shared) run directory and keeps its own part of the full state
        state = restore(t, ckpt.load(rd.checkpoints, map_location=t.env.device))
    except ckpt.CheckpointError as err:
        raise RunError(f"cannot resume {rd.path}: {err}") from None
    if t.env.is_main:
        rd.truncate_to_checkpoint(state.step)
    return state


def _train(t: Training, rd: RunDir, *, resuming: bool, quiet: bool, command: str, report: bool) -> Path:
    cfg, env = t.cfg, t.env
    state = _start(t, rd, resuming)
    if env.is_main:
        rd.create()
        rd.write_config(cfg.to_yaml())
        rd.write_json("events.json", [e.to_dict() for e in state.tracker.events])
    tensorboard = None
    if env.is_main and cfg.train.tensorboard:
        kept = [r for r in rd.metrics() if r.get("step") == state.step] if resuming else []
        tensorboard = TensorBoardLog(rd.path, state.step if resuming else None, kept)
    log = RunLog(rd, Progress(t.steps, start=state.step, quiet=quiet), main=env.is_main, tensorboard=tensorboard)
    if not quiet:
        verb = f"resuming at step {state.step}" if resuming else "training"
        n_params = sum(p.numel() for p in t.model.parameters())
        log.message(f"trainlab: {verb} {cfg.workload.name} / {cfg.model.name} ({n_params:,} parameters) / "
                    f"{cfg.optimizer.name} on {env.device}"
                    + (f" x{env.world_size} processes" if env.distributed else "") + f" -> {rd.path}")
        note = cfg.recipe_note()
        if note and not resuming:
            log.message(f"  {note}")
    t.prober.message = log.message

    stop = StopFlag()
    started = time.perf_counter()
    with stop.installed(), _flush_subnormals(env.device):
        status = train_loop(t, state, rd, log, stop)
    log.close()
    if status in ("completed", "reached_target", "out_of_time"):
        save_checkpoint(t, state, rd, state.wall_offset + time.perf_counter() - started)
    if env.is_main:
        summary = _summary(t, state, rd, status, command)
        rd.write_json("summary.json", summary)
        report_path = None
        if report:
            from trainlab.report import write_run_report

            report_path = write_run_report(rd.path)
        if not quiet:
            print(closing_text(summary, rd.path, report_path))
        elif status == "interrupted":
            print(f"trainlab: interrupted at step {state.step}; resume with: trainlab run --resume {rd.path}",
                  file=sys.stderr)
    return rd.path


@contextlib.contextmanager
def _flush_subnormals(device: torch.device) -> Iterator[None]:
    """Flush subnormal floats to zero while training on a CPU, then restore torch's default (off).

    Subnormals (|x| < 1.2e-38 in float32) take a slow path on x86 CPUs. AdamW's second moments reach them once
    the loss is ~1e-6 (the default grokking recipe): steps went from 16 ms to 100-260 ms. Flushing them changes
    nothing a float32 run represents at normal precision (the default run's final metrics are identical).
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _summary(t: Training, s: TrainState, rd: RunDir, status: str, command: str) -> dict[str, Any]:
    """summary.json: what the logs say (:mod:`trainlab.rundir.summary`, the same functions a report of an
    unfinished run uses) plus what only the trainer knows."""
    rows = rd.metrics()
    metric = t.workload.metric
    return {
        "name": rd.path.name,
        "status": status,
        "workload": t.cfg.workload.name,
        "model": t.cfg.model.name,
        "optimizer": t.cfg.optimizer.name,
        "schedule": t.cfg.schedule.name,
        "recipe": t.cfg.recipe_note(),
        "metric": metric,
        "higher_is_better": t.workload.higher_is_better,
        "threshold": s.tracker.threshold,
        **summarize.from_rows(rows, metric, t.workload.higher_is_better),
        "steps": s.step,
        "steps_planned": t.steps,
        "train_time": round(s.train_time, 3),
        "events": s.tracker.summary(),
        "probes": {"cost": summarize.probe_cost(rows, t.cfg.probes.names), "skipped": dict(t.prober.skipped)},
        "event_list": [e.to_dict() for e in s.tracker.events],
        "parameters": sum(p.numel() for p in t.model.parameters()),
        "device": str(t.env.device),
        "world_size": t.env.world_size,
        **({"comm": {**t.strategy.summary(),
                     "bytes_per_step": round(t.strategy.meter.total / s.step, 1) if s.step else 0.0}}
           if t.strategy.active else {}),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "command": command,
    }


def closing_text(summary: dict[str, Any], path: Path, report_path: Path | None) -> str:
    """The terminal's closing summary of a run."""
    metric, ev = summary["metric"], summary["events"]
    lines = [f"trainlab: {summary['status']} {summary['steps']} steps in {summary['train_time']:.1f} s of training "
             f"({summary['wall_time'] or 0:.1f} s wall)"]
    for name, split in (("memorized", "train"), ("generalized", "val")):
        event = next((e for e in summary["event_list"] if e["name"] == name), None)
        if event:
            lines.append(f"  {name:<12} step {event['step']:>6}  at {event['time']:.1f} s  ({event['detail']})")
        else:
            lines.append(f"  {name:<12} not reached ({split} {metric} never reached {summary['threshold']:g})")
    if ev.get("grokking_delay_steps") is not None:
        lines.append(f"  grokking delay: {ev['grokking_delay_steps']} steps, {ev['grokking_delay_seconds']:.1f} s")
    if "diverged" in ev:
        lines.append(f"  diverged at step {ev['diverged']}")
    final = summary["final"]
    if final:
        shown = ", ".join(f"{k} {final[k]:.4g}" for k in final
                          if k.startswith(("train_", "val_")) and isinstance(final[k], (int, float)))
        lines.append(f"  final: {shown}")
    lines.append(f"  run directory: {path}")
    if report_path is not None:
        lines.append(f"  report: {report_path}")
    if summary["status"] == "interrupted":
        lines.append(f"  resume with: trainlab run --resume {path}")
    return "\n".join(lines)
