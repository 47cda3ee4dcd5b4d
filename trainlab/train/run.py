"""``trainlab run`` as a function: resolve the config, prepare the run directory, train, summarise, report."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from trainlab.config import ConfigError
from trainlab.distributed import env as dist_env
from trainlab.rundir import checkpoints as ckpt
from trainlab.rundir import summary as summarize
from trainlab.train.config import RESUMABLE_KEYS, RunConfig, for_resume, from_cli
from trainlab.train.loop import StopFlag, train_loop
from trainlab.train.state import TrainState, divergence_summary, restore
from trainlab.train.training import Training, build_training
from trainlab.train.progress import Progress
from trainlab.train.runlog import RunLog
from trainlab.train.tensorboard import TensorBoardLog
from trainlab.train.tensorboard import require as require_tensorboard
from trainlab.train.threads import ThreadChoice, apply_threads, oversubscription_warning
from trainlab.rundir import RunDir, RunDirLock, lock_run_dir, new_run_dir, printable, timestamp, versions
from trainlab.errors import RunError, UserError, one_line  # RunError is defined there; imported from here too


def run(config: RunConfig | str | Path | None = None, overrides: Sequence[str] = (), **options: Any) -> Path:
    """Train one configuration and return its run directory (:func:`run_outcome`'s arguments).

    An interrupted run (Ctrl-C, SIGTERM) returns its directory too, like every run that ends: its
    ``summary.json`` says ``"status": "interrupted"`` and it can be resumed. Raising instead would hide the
    directory from callers that resume or score it (the bench removes unfinished trials by that status); a
    caller that needs the signal uses :func:`run_outcome`, as ``trainlab run`` does for its exit code.
    Example::

        run_dir = trainlab.run(overrides=["workload=sparse_parity", "steps=500"], quiet=True)
    """
    return run_outcome(config, overrides, **options).path


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its directory, its status (as in its summary.json) and the signal that stopped it."""

    path: Path
    status: str
    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """``trainlab run``'s exit status: 0, or 128 + the signal for an interrupted run (130 after Ctrl-C, 143
        after SIGTERM: the shell's convention), so a script or scheduler can tell it from a finished one."""
        if self.status != "interrupted":
            return 0
        return 128 + (self.signum or signal.SIGTERM)  # no signal recorded: stopped at a caller's request


def run_outcome(
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
) -> Outcome:
    """Train one configuration; return its :class:`Outcome`.

    ``config`` is a :class:`RunConfig`, a YAML path, or None (the defaults); ``overrides`` are ``key=value``
    strings applied on top. ``resume`` continues the run in that directory from its newest checkpoint.

    The run holds its directory's lock (:mod:`trainlab.rundir.lock`) from before its slow set-up to its end: a
    second run into the same ``out``, or a second ``resume``, is refused with a :class:`RunDirBusyError` naming
    the holder. Without ``out`` the directory is ``runs_root/NAME``, made with one ``mkdir``, so runs started
    together never share one.

    ``auto_resume`` (``--auto-resume``, needs ``out``): when ``out`` already holds a run of the same
    configuration, continue it from its newest checkpoint instead of refusing (or start it afresh when it has
    no checkpoint yet). This is what makes ``torchrun --max-restarts=K ... trainlab run ... --out DIR
    --auto-resume`` survive a lost worker: torchrun restarts every worker with the same command, and they pick
    up the last checkpoint, losing at most ``checkpoint_every`` steps (the dead attempt's lock died with it).
    A different configuration in ``out`` (other than the keys a resume may change) is an error.
    """
    if auto_resume and (out is None or resume is not None):
        raise RunError("--auto-resume needs --out DIR (the directory a restarted launch continues) and no --resume")
    cfg = _resolve(config, overrides, resume)
    if cfg.train.tensorboard:
        require_tensorboard()
    try:
        env = dist_env.setup(cfg.train.device)
    except RuntimeError as err:
        raise RunError(str(err)) from None
    command = command or _command()
    finished = False
    try:
        claim = _claim(cfg, env, out=out, resume=resume, runs_root=runs_root, auto_resume=auto_resume,
                       command=command)
        try:
            outcome = _run(cfg, env, claim.rd, resuming=claim.resuming, quiet=quiet or not env.is_main,
                           command=command, report=report)
            finished = True
            return outcome
        finally:
            claim.release()
    finally:
        env.close(together=finished)


def _resolve(config: RunConfig | str | Path | None, overrides: Sequence[str], resume: str | Path | None) -> RunConfig:
    """The configuration to train: ``resume``'s saved config with ``overrides``, or ``config`` with them."""
    if resume is not None:
        rd = RunDir(Path(resume))
        if not rd.config_path.is_file():
            raise RunError(f"cannot resume {rd.path}: it holds no trainlab run (no config.yaml)")
        try:
            return for_resume(rd.config_path, overrides)
        except ConfigError as err:
            if err.key in RESUMABLE_KEYS or any(o.partition("=")[0].strip() == err.key for o in overrides):
                raise  # a mistake in this command's own overrides
            raise RunError(f"cannot resume {rd.path}: its config.yaml does not resolve ({err})") from None
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("", "pass overrides with a YAML path or None, not with a RunConfig")
        return config
    return from_cli(str(config) if config is not None else None, overrides)


@dataclass
class _Claim:
    """The run directory every process trains into; the main process holds its lock."""

    rd: RunDir
    resuming: bool
    lock: RunDirLock | None = None
    created: bool = False  # this run made the directory

    def release(self) -> None:
        """Let the directory go; one this run made and never wrote a run into (a start that failed) goes too."""
        if self.lock is not None:
            self.lock.release(remove_directory=self.created and not self.rd.has_run())


def _claim(cfg: RunConfig, env: Any, *, out: str | Path | None, resume: str | Path | None, runs_root: str | Path,
           auto_resume: bool, command: str) -> _Claim:
    """Take the run directory on the main process and tell every process which it is and whether it resumes.

    Under torchrun only rank 0 writes the run directory, so it alone locks it; a refusal is broadcast like the
    directory, so the other ranks exit with the same message instead of waiting for a peer that left.
    """
    if env.is_main:
        try:
            claim = _take(cfg, out=out, resume=resume, runs_root=runs_root, auto_resume=auto_resume, command=command)
        except (UserError, OSError) as err:
            env.broadcast(one_line(err))
            raise
        env.broadcast((str(claim.rd.path), claim.resuming))
        return claim
    shared = env.broadcast(None)
    if isinstance(shared, str):
        raise RunError(shared)
    return _Claim(RunDir(shared[0]), resuming=shared[1])


def _take(cfg: RunConfig, *, out: str | Path | None, resume: str | Path | None, runs_root: str | Path,
          auto_resume: bool, command: str) -> _Claim:
    """Lock the run directory (making it first if needed), decide whether the run resumes, and delete the
    temporary files of writers killed mid-write (safe now that no other writer can be there)."""
    if resume is not None:
        path, created = Path(resume), False
    elif out is not None:
        path, created = Path(out), _make_out_dir(Path(out))
    else:
        name = cfg.train.name or f"{cfg.workload.name}-{cfg.optimizer.name}-{timestamp()}"
        path, created = new_run_dir(Path(runs_root), name), True
    claim = _Claim(RunDir(path), resuming=resume is not None, lock=lock_run_dir(path, command), created=created)
    try:
        if resume is None:
            claim.resuming = _continues(cfg, claim.rd, auto_resume)
        claim.rd.remove_temporaries()
    except BaseException:
        claim.release()
        raise
    return claim


def _make_out_dir(path: Path) -> bool:
    """Make the directory ``--out`` names; whether it was made now (False: it existed)."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise RunError(f"--out {path} is a file, not a directory") from None
        return False
    return True


def _continues(cfg: RunConfig, rd: RunDir, auto_resume: bool) -> bool:
    """Whether a new run into ``rd`` continues the run there (``--auto-resume``); a run already there is an
    error otherwise."""
    if not auto_resume:
        if rd.has_run():
            raise RunError(f"{rd.path} already holds a run; resume it with --resume {rd.path} (or --auto-resume), "
                           "or choose another --out")
        return False
    verdict = _auto_resume_verdict(cfg, rd)
    if verdict == "fresh":
        rd.truncate_to_checkpoint(-1)  # rows of an attempt that never checkpointed
    return verdict == "resume"


def _auto_resume_verdict(cfg: RunConfig, rd: RunDir) -> str:
    """``--auto-resume``: "new", "fresh" (a run without a checkpoint) or "resume"; a RunError for another run."""
    if not rd.has_run():
        return "new"
    saved_path = rd.config_path
    if not saved_path.is_file():
        return "fresh"
    try:
        saved = from_cli(str(saved_path), []).to_plain()
    except ConfigError as err:
        raise RunError(f"--auto-resume: the config saved in {rd.path} no longer resolves ({err})") from None
    new = cfg.to_plain()
    for key in sorted(set(saved) | set(new)):
        if key not in RESUMABLE_KEYS and saved.get(key) != new.get(key):
            raise RunError(f"--auto-resume: {rd.path} holds a run with a different {key} ({saved.get(key)!r}, not "
                           f"{new.get(key)!r}); choose another --out")
    return "resume" if ckpt.latest_manifest(rd.checkpoints) is not None else "fresh"


def _command() -> str:
    """This process's command line as a shell would take it, as valid UTF-8 (:func:`printable`)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(shlex.quote(printable(a)) for a in argv)


def _run(cfg: RunConfig, env: Any, rd: RunDir, *, resuming: bool, quiet: bool, command: str, report: bool) -> Outcome:
    previous = torch.get_num_threads()
    threads = apply_threads(cfg.train.threads)  # before the set-up, which builds data and model with torch
    try:
        training = build_training(cfg, env, resuming=resuming)
        try:
            return _train(training, rd, threads, resuming=resuming, quiet=quiet, command=command, report=report)
        finally:
            training.strategy.finish()
    finally:
        torch.set_num_threads(previous)  # a caller's process keeps its own setting


def _start(t: Training, rd: RunDir, resuming: bool, threads: ThreadChoice) -> tuple[TrainState, ThreadChoice]:
    """The state to train from: fresh, or the run directory's newest checkpoint (logs cut back to it); and the
    threads to train with: an automatic choice gives way to the count the checkpointed steps ran with, since a
    step's floating-point results depend on the thread count (the resumed run stays bit-identical)."""
    if not resuming:
        return TrainState.fresh(t), threads
    try:  # every process reads the (shared) run directory and keeps its own part of the full state
        payload = ckpt.load(rd.checkpoints, map_location=t.env.device)
        state = restore(t, payload)
    except ckpt.CheckpointError as err:
        raise RunError(f"cannot resume {rd.path}: {err}") from None
    saved = payload.get("threads")
    if threads.source == "auto" and isinstance(saved, int) and saved >= 1 and saved != threads.threads:
        torch.set_num_threads(saved)
        threads = replace(threads, threads=saved, source="auto (the checkpoint's)")
    if t.env.is_main:
        rd.truncate_to_checkpoint(state.step)
    return state, threads


def _train(t: Training, rd: RunDir, threads: ThreadChoice, *, resuming: bool, quiet: bool, command: str,
           report: bool) -> Outcome:
    cfg, env = t.cfg, t.env
    state, threads = _start(t, rd, resuming, threads)
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
                    + (f" x{env.world_size} processes" if env.distributed else "") + f" -> {printable(str(rd.path))}")
        crowded = oversubscription_warning(threads)  # load + this run's threads > usable CPUs
        if crowded:
            log.message(crowded)
        note = cfg.recipe_note()
        if note and not resuming:
            log.message(f"  {note}")
        if t.federation is not None and not resuming:  # what a step is here
            log.message(f"  {t.federation.describe()}")
        if t.diet is not None and not resuming:  # training on a subset: say which, before it trains
            log.message(f"  {t.diet.note()}")
        if cfg.batch.lr_rule != "none" and not resuming:
            log.message(f"  batch.lr_rule={cfg.batch.lr_rule}: lr x {t.batch_lr_factor:.4g} for batch "
                        f"{cfg.train.batch_size or 'full'}")
    t.prober.message = log.message

    stop = StopFlag()
    with stop.installed(), _flush_subnormals(env.device):
        status = train_loop(t, state, rd, log, stop)  # ends with a checkpoint of a finite state, or none
    log.close()
    if env.is_main:
        summary = _summary(t, state, rd, status, command, threads)
        rd.write_json("summary.json", summary)
        report_path = None
        if report:
            from trainlab.report import write_run_report

            report_path = write_run_report(rd.path)
        if not quiet:
            print(closing_text(summary, rd.path, report_path))
        if status == "interrupted":
            print(interrupted_line(stop.signum, state.step, rd.path), file=sys.stderr)
    return Outcome(rd.path, status, stop.signum)


def interrupted_line(signum: int | None, step: int, path: Path) -> str:
    """The line an interrupted run ends with (also in quiet mode: the run did not finish, and can go on)."""
    by = f" by {signal.Signals(signum).name}" if signum else ""
    return (f"trainlab: interrupted, resumable: stopped{by} at step {step} with a checkpoint; continue with: "
            f"trainlab run --resume {shlex.quote(printable(str(path)))}")


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


def _summary(t: Training, s: TrainState, rd: RunDir, status: str, command: str,
             threads: ThreadChoice) -> dict[str, Any]:
    """summary.json: what the logs say (:mod:`trainlab.rundir.summary`, the same functions a report of an
    unfinished run uses) plus what only the trainer knows."""
    rows = rd.metrics()
    metric = t.workload.metric
    return {
        "name": printable(rd.path.name),
        "status": status,
        "workload": t.cfg.workload.name,
        "model": t.cfg.model.name,
        "optimizer": t.cfg.optimizer.name,
        **({"optimizer_resolved": resolved} if (resolved := _resolved_options(t.optimizer)) else {}),
        "schedule": t.cfg.schedule.name,
        "recipe": t.cfg.recipe_note(),
        "metric": metric,
        "higher_is_better": t.workload.higher_is_better,
        "threshold": s.tracker.threshold,
        **summarize.from_rows(rows, metric, t.workload.higher_is_better),
        "steps": s.step,
        "steps_planned": t.steps,
        "train_time": round(s.train_time, 3),
        "cpu_time": round(s.cpu_time, 3),  # this process's CPU seconds in the same stretches (trainlab.train.loop)
        "events": s.tracker.summary(),
        **summarize.continual_summary(rows, t.steps),  # a task sequence's matrix, ACC/BWT/FWT, stability gaps
        "divergence": divergence_summary(s),
        "probes": {"cost": summarize.probe_cost(rows, t.cfg.probes.names), "skipped": dict(t.prober.skipped)},
        **({"data": {"kept": t.diet.kept, "of": t.diet.n_total, "selected": t.diet.record}}
           if t.diet is not None else {}),
        **({"batch": {"lr_rule": t.cfg.batch.lr_rule, "lr_factor": t.batch_lr_factor,
                      "steps_rule": t.cfg.batch.steps_rule}}
           if t.cfg.batch != type(t.cfg.batch)() else {}),
        **({"prune": t.pruner.summary()} if t.pruner is not None else {}),  # final sparsity, per-layer counts
        **({"federation": t.federation.summary()} if t.federation is not None else {}),  # clock, bytes, updates
        "event_list": [e.to_dict() for e in s.tracker.events],
        "parameters": sum(p.numel() for p in t.model.parameters()),
        "device": str(t.env.device),
        "world_size": t.env.world_size,
        **({"comm": {**t.strategy.summary(),
                     "bytes_per_step": round(t.strategy.meter.total / s.step, 1) if s.step else 0.0}}
           if t.strategy.active else {}),
        "threads": torch.get_num_threads(),  # torch's intra-op threads per process
        "threads_source": threads.source,  # option (threads=N), env (OMP_NUM_THREADS) or auto (trainlab.train.threads)
        "versions": versions(),
        "command": command,
    }


def _resolved_options(optimizer: Any) -> dict[str, Any]:
    """What an optimizer's machine-dependent options (``auto``) resolved to, from its ``resolved_options()``
    if it has one (Muon: ``{"ns_dtype": "bfloat16"}``), else ``{}``."""
    method = getattr(optimizer, "resolved_options", None)
    return dict(method()) if callable(method) else {}


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "n/a"


def closing_text(summary: dict[str, Any], path: Path, report_path: Path | None) -> str:
    """The terminal's closing summary of a run."""
    metric, ev = summary["metric"], summary["events"]
    lines = [f"trainlab: {summary['status']} {summary['steps']} steps in {summary['train_time']:.1f} s of training "
             f"({summary.get('cpu_time') or 0:.1f} s CPU, {summary['wall_time'] or 0:.1f} s wall)"]
    continual = summary.get("continual")
    if continual:  # a task sequence: what it retained, not when it first fitted (De Lange et al.'s metrics too)
        lines.append(f"  {continual['tasks']} tasks: average accuracy {_g(continual.get('acc'))}, backward transfer "
                     f"{_g(continual.get('bwt'))}, forgetting {_g(continual.get('forgetting'))}, min-ACC "
                     f"{_g(continual.get('min_acc'))}; stability gaps: {ev.get('stability_gap_count', 0)}")
    for name, split in (() if continual else (("memorized", "train"), ("generalized", "val"))):
        event = next((e for e in summary["event_list"] if e["name"] == name), None)
        if event:
            lines.append(f"  {name:<12} step {event['step']:>6}  at {event['time']:.1f} s  ({event['detail']})")
        else:
            lines.append(f"  {name:<12} not reached ({split} {metric} never reached {summary['threshold']:g})")
    if ev.get("grokking_delay_steps") is not None and not continual:
        lines.append(f"  grokking delay: {ev['grokking_delay_steps']} steps, {ev['grokking_delay_seconds']:.1f} s")
    went_wrong = summary.get("divergence")
    if went_wrong:
        last = went_wrong["last_finite_checkpoint"]
        lines.append(f"  diverged at step {went_wrong['step']} ({went_wrong['detail']}); "
                     + (f"last finite checkpoint: step {last}" if last is not None else "no checkpoint was written"))
    fed = summary.get("federation")
    if fed:  # what a federated run's steps cost in simulated time and bytes
        lines.append(f"  federation: {fed['server_updates']} server updates from {fed['client_updates']} client updates "
                     f"({fed['dropped']} dropped) in {fed['sim_time']:.1f} simulated s; {fed['bytes_up'] / 1e6:.2f} MB "
                     f"up, {fed['bytes_down'] / 1e6:.2f} MB down")
    final = summary["final"]
    if final:
        shown = ", ".join(f"{k} {final[k]:.4g}" for k in final
                          if k.startswith(("train_", "val_")) and isinstance(final[k], (int, float)))
        lines.append(f"  final: {shown}")
    lines.append(f"  run directory: {printable(str(path))}")
    if report_path is not None:
        lines.append(f"  report: {printable(str(report_path))}")
    return "\n".join(lines)
