"""The training loop. :func:`train_loop` is the whole of it, on one screen; the rest of this file builds its parts.

Order inside one iteration, at step ``s`` (``s`` optimizer steps already taken)::

    evaluate if s is 0, a multiple of eval_every, or the last step   (timer paused)
    checkpoint if s is a multiple of checkpoint_every                 (timer paused)
    set lr = base_lr * schedule(s); take the batch of s; one optimizer step; s += 1

A checkpoint at ``s`` therefore holds the state *after* the evaluation row of ``s`` was written; a resumed
run continues from there and does not repeat that row. Training time counts only the optimizer steps (and
the batch selection and lr setting that belong to them), never evaluation, logging or checkpointing.

Several processes (``torchrun``) train through a :class:`~trainlab.distributed.strategy.Strategy` (``dist.strategy``):
it shards or wraps the model, builds the optimizer, takes its turn after every optimizer step
(``after_step``: DiLoCo's outer step), supplies the weights evaluation sees and the full state checkpoints
hold; its byte meter adds ``comm_bytes`` (since the previous row), ``comm_bytes_step`` (the last step's) and
``comm_bytes_total`` to every evaluation row.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from trainlab import models, optim, schedules, workloads
from trainlab.config import ConfigError
from trainlab.distributed import strategy as strategies
from trainlab.distributed.env import DistEnv
from trainlab.distributed.strategy import STRATEGIES
from trainlab.train import state as ckpt
from trainlab.train.config import RunConfig
from trainlab.train.data import BatchSampler
from trainlab.losses.objective import Objective, n_classes_of
from trainlab.models.setup import apply_param_options, optimizer_params
from trainlab.train.events import EventTracker
from trainlab.train.prober import Prober
from trainlab.train.progress import Progress
from trainlab.train.rundir import RunDir
from trainlab.workloads.base import Dataset, Workload


@dataclass
class Parts:
    """Everything the loop touches, built once by :func:`build_parts`."""

    cfg: RunConfig
    env: DistEnv
    workload: Workload
    data: Dataset
    model: nn.Module  # the plain module (state_dict, evaluation)
    net: nn.Module  # what the step calls: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    lr_multiplier: Callable[[int], float]
    base_lrs: list[float]
    sampler: BatchSampler
    autocast: Callable[[], contextlib.AbstractContextManager]
    tracker: EventTracker
    objective: Objective
    prober: Prober
    strategy: strategies.Strategy = field(default_factory=lambda: strategies.Strategy(None, DistEnv()))
    step: int = 0
    train_time: float = 0.0
    wall_offset: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    trace: list[tuple[int, float, Tensor, Tensor]] = field(default_factory=list)  # (step, lr, loss, grad norm)


def input_kind_for(workload: Workload, model_name: str) -> str:
    """The first input kind the workload offers that the model reads."""
    readable = models.input_kinds(model_name)
    for kind in workload.input_kinds:
        if kind in readable:
            return kind
    raise ConfigError("model", f"{model_name} reads {', '.join(readable)} inputs, but workload {workload.name} "
                               f"provides {', '.join(workload.input_kinds)}")


def autocast_factory(setting: str, device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    use_bf16 = setting == "bf16" or (setting == "auto" and device.type == "cuda" and dtype == torch.float32)
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to(data: Dataset, device: torch.device, dtype: torch.dtype) -> Dataset:
    def move(t: Tensor) -> Tensor:
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    return Dataset(move(data.x_train), move(data.y_train), move(data.x_val), move(data.y_val))


def build_parts(cfg: RunConfig, env: DistEnv) -> Parts:
    t = cfg.train
    dtype = torch.float64 if t.dtype == "float64" else torch.float32
    torch.manual_seed(t.seed)
    workload = workloads.build(cfg.workload.name, **cfg.workload.kwargs())
    kind = input_kind_for(workload, cfg.model.name)
    data = _to(workload.data(kind), env.device, dtype)  # type: ignore[arg-type]
    spec = workload.spec(kind)  # type: ignore[arg-type]
    model = models.build(cfg.model.name, spec, **cfg.model.kwargs()).to(env.device, dtype)
    model = apply_param_options(model, cfg.param, data.x_train[:1024])
    strategy = strategies.build(cfg.dist, env)
    if cfg.probes.names and cfg.dist.strategy == "fsdp" and env.distributed:
        raise ConfigError("probes", "probes run on the main process alone, but fsdp shards the parameters over all "
                                    "processes; use dist.strategy=ddp or zero1 to probe")
    try:
        model = strategy.prepare(model)
        needs_model = optim.OPTIMIZERS.get(cfg.optimizer.name).meta.get("needs_model", False)
        params = optimizer_params(model, cfg.param, cfg.optimizer.name, cfg.optimizer.kwargs().get("lr"), needs_model)
        optimizer = strategy.build_optimizer(cfg.optimizer.name, params, cfg.optimizer.kwargs())
        set_mode = getattr(optimizer, "train", None)  # schedule-free optimizers must be in train mode to step
        if callable(set_mode):
            set_mode()
        net = strategy.wrap(model, optimizer)
        if t.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        assert t.steps is not None and t.batch_size is not None and t.threshold is not None and t.eval_every is not None
        objective = Objective(cfg.loss, workload, model, n_train=data.n_train, n_classes=n_classes_of(spec),
                              distributed=env.distributed or strategy.world_size > 1, compiled=t.compile)
        prober = Prober(cfg.probes, t.steps, t.eval_every, loss_fn=objective.primary, data=data)
        return Parts(
            cfg=cfg, env=env, workload=workload, data=data, model=model, net=net, optimizer=optimizer,
            lr_multiplier=schedules.build(cfg.schedule.name, t.steps, **cfg.schedule.kwargs()),
            base_lrs=[float(g["lr"]) for g in optimizer.param_groups],
            sampler=BatchSampler(data.n_train, t.batch_size, t.seed, env.rank, env.world_size),
            autocast=autocast_factory(t.autocast, env.device, dtype),
            tracker=EventTracker(workload.metric, workload.higher_is_better, t.threshold),
            objective=objective, prober=prober, strategy=strategy,
        )
    except BaseException:
        strategy.finish()  # a one-process group made for this run goes with it
        raise


def train_step(p: Parts, step: int) -> Tensor:
    """One optimizer step on the batch of ``step``; returns the local mean loss (not synchronised)."""
    lr_scale = p.lr_multiplier(step)
    for group, base in zip(p.optimizer.param_groups, p.base_lrs):
        group["lr"] = base * lr_scale
    idx = p.sampler.indices(step)
    x, y = p.data.x_train[idx], p.data.y_train[idx]
    with p.autocast():
        losses, penalty = p.objective(p.net, x, y, idx)
    # sum * world / global count == the global-batch mean after DDP averages gradients over processes,
    # whatever the share sizes; with one process it is the plain mean. DiLoCo's workers do not average
    # gradients: each minimises the mean over its own share.
    p.optimizer.zero_grad(set_to_none=True)
    if p.strategy.local_loss:
        total = losses.sum() / max(losses.numel(), 1)
    else:
        per_example = losses.numel() // max(len(idx), 1)
        global_count = len(p.sampler.global_indices(step)) * per_example
        total = losses.sum() * (p.env.world_size / global_count)
    (total if penalty is None else total + penalty).backward()
    grad_norm = None
    if p.cfg.train.grad_clip is not None:
        grad_norm = p.extra["grad_norm"] = _local(
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), p.cfg.train.grad_clip))
    elif p.cfg.train.trace:
        grad_norm = global_grad_norm(p.model)
    p.optimizer.step()
    p.strategy.after_step(step + 1)
    p.strategy.meter.end_step()
    loss = losses.detach().mean()
    observe = getattr(p.optimizer, "observe_loss", None)
    if callable(observe):  # self-tuning optimizers (e.g. AutoLRS) steer by the training loss they produced
        observe(loss)
    if p.cfg.train.trace:  # kept on the device; read at the next evaluation, so no per-step sync
        p.trace.append((step, p.base_lrs[0] * lr_scale, loss, grad_norm))  # type: ignore[arg-type]
    return loss


def global_grad_norm(model: nn.Module) -> Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ measures), as a device scalar."""
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    if not grads:
        return torch.zeros(())
    return _local(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))


def _local(t: Tensor) -> Tensor:
    """A replicated DTensor (FSDP's norms) as the plain tensor every process holds; others unchanged."""
    to_local = getattr(t, "full_tensor", None)
    return to_local() if callable(to_local) else t


def drain_trace(p: Parts) -> list[dict[str, Any]]:
    """The recorded steps since the last call, as rows for trace.jsonl (one device sync for all)."""
    if not p.trace:
        return []
    values = torch.stack([torch.stack([loss.float(), norm.float().to(loss.device)]) for _, _, loss, norm in p.trace])
    rows = [{"step": step, "lr": lr, "loss": v[0], "grad_norm": v[1]}
            for (step, lr, _, _), v in zip(p.trace, values.tolist())]
    p.trace.clear()
    return rows


@torch.no_grad()
def evaluate_split(p: Parts, x: Tensor, y: Tensor, chunk: int = 1024) -> tuple[float, float]:
    """(mean loss, mean metric) over a split, sharded across processes and summed with all-reduce."""
    limit = min(p.cfg.train.eval_examples or len(x), len(x))
    shard = torch.tensor_split(torch.arange(limit), p.env.world_size)[p.env.rank]
    sums = torch.zeros(3, dtype=torch.float64, device=p.env.device)
    # fsdp's forward is a collective (it all-gathers the parameters): every process makes the same number of calls
    calls = math.ceil(math.ceil(limit / p.env.world_size) / chunk) if p.strategy.lockstep_forward else 0
    for i in range(0, max(len(shard), calls * chunk), chunk):
        if i >= len(shard):
            with p.autocast():
                p.model(x[:1])  # a shorter share: keep step with the other processes' gathers
            continue
        idx = shard[i:i + chunk].to(p.env.device)
        with p.autocast():
            out = p.model(x[idx])
        losses, values = p.objective.primary(out, y[idx]), p.workload.metric_values(out, y[idx])
        sums += torch.stack([losses.double().sum(), values.double().sum(), torch.tensor(losses.numel(), device=sums.device, dtype=torch.float64)])
    p.env.all_reduce_sum(sums)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def evaluate(p: Parts, wall: float) -> dict[str, Any]:
    metric = p.workload.metric
    # Schedule-free optimizers evaluate at their averaged weights. Before the first step there is nothing
    # averaged yet (and some, e.g. pytorch-optimizer's SPlus, fail on empty state), so the switch waits.
    switch = p.step > 0
    set_mode = getattr(p.optimizer, "eval", None) if switch else None
    if callable(set_mode):
        set_mode()
    p.model.eval()
    with p.strategy.eval_weights():  # DiLoCo: the global model
        train_loss, train_metric = evaluate_split(p, p.data.x_train, p.data.y_train)
        val_loss, val_metric = evaluate_split(p, p.data.x_val, p.data.y_val)
    p.model.train()
    set_mode = getattr(p.optimizer, "train", None) if switch else None
    if callable(set_mode):
        set_mode()
    row = {"step": p.step, "time": round(p.train_time, 6), "wall": round(wall, 3),
           "lr": current_lr(p),
           "train_loss": train_loss, f"train_{metric}": train_metric, "val_loss": val_loss, f"val_{metric}": val_metric}
    if "grad_norm" in p.extra:
        row["grad_norm"] = float(p.extra["grad_norm"])
    if p.strategy.active:
        row.update(comm_columns(p))
    return row


def comm_columns(p: Parts) -> dict[str, int]:
    """This process's payload bytes (see trainlab.distributed.comm): since the previous row, last step, in total."""
    meter = p.strategy.meter
    since = meter.total - p.extra.get("comm_row_total", 0)
    p.extra["comm_row_total"] = meter.total
    return {"comm_bytes": since, "comm_bytes_step": meter.last_step, "comm_bytes_total": meter.total}


def timing_row(p: Parts, wall: float) -> dict[str, Any]:
    """The row of a step probed between evaluations: no evaluation metrics, only where and when."""
    return {"step": p.step, "time": round(p.train_time, 6), "wall": round(wall, 3), "lr": current_lr(p)}


def current_lr(p: Parts) -> float:
    """The first group's lr for the step about to be taken (the last step's at the end of the run). An optimizer
    that sets its own lr (AutoLRS) reports it through a ``current_lr()`` method: the lr of its last step."""
    own = getattr(p.optimizer, "current_lr", None)
    if callable(own):
        return float(own())
    return p.base_lrs[0] * p.lr_multiplier(min(p.step, p.cfg.train.steps - 1))  # type: ignore[operator]


def needs_all_ranks(p: Parts) -> bool:
    """Whether building a checkpoint is collective (sharded or per-process state): every rank must call it."""
    return p.strategy.world_size > 1 and (p.strategy.per_rank_state or p.strategy.consolidated_state)


def checkpoint_payload(p: Parts, wall: float) -> dict[str, Any]:
    """The checkpoint's content. Call it on every rank when :func:`needs_all_ranks` (sharded strategies gather
    the full model and optimizer state to rank 0, a collective); only rank 0's result is written."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()  # type: ignore[assignment]
    s = p.strategy
    local = {"model": s.model_state(p.model), "optimizer": s.optimizer_state(p.model, p.optimizer),
             "strategy": s.state_dict()}
    payload = {**local, "train_time": p.train_time,
               "wall_time": wall, "events": [e.to_dict() for e in p.tracker.events], "rng": rng,
               "objective": p.objective.state_dict(), "probe_initial": p.prober.initial,
               "event_state": dict(p.tracker.state), "world_size": s.world_size, "strategy_name": s.name}
    if s.per_rank_state and s.world_size > 1:
        # DiLoCo's workers hold different weights and inner-optimizer states between outer steps: keep each.
        # (gather_object pickles over the process group between this run's own processes; files never are.)
        gathered: list[Any] | None = [None] * s.world_size if s.rank == 0 else None
        torch.distributed.gather_object(local, gathered, dst=0)
        payload["ranks"] = gathered
    return payload


def save_checkpoint(p: Parts, rd: RunDir, wall: float) -> None:
    """Write the checkpoint of step ``p.step``. Call it on every rank: the ranks that must take part in building
    it (:func:`needs_all_ranks`) do, and only the main process writes."""
    if p.env.is_main or needs_all_ranks(p):
        payload = checkpoint_payload(p, wall)
        if p.env.is_main:
            ckpt.save(rd.checkpoints, p.step, payload)


def restore(p: Parts, payload: dict[str, Any]) -> None:
    s = p.strategy
    saved_name = payload.get("strategy_name")
    consolidated = {e.name for e in STRATEGIES if e.factory.consolidated_state}  # checkpoints of gathered shards
    if saved_name is not None and saved_name != s.name and {saved_name, s.name} & consolidated:
        raise ckpt.CheckpointError(f"checkpoint was written by dist.strategy={saved_name}; cannot resume it "
                                   f"with {s.name}")
    local = payload
    if "ranks" in payload:
        ranks = payload["ranks"]
        if len(ranks) != s.world_size:
            raise ckpt.CheckpointError(f"checkpoint holds {len(ranks)} {s.name} workers' states; resume it with "
                                       f"torchrun --nproc_per_node={len(ranks)} (workers hold different weights)")
        local = ranks[s.rank]
    s.load_model_state(p.model, local["model"])
    s.load_optimizer_state(p.model, p.optimizer, local["optimizer"])
    s.load_state_dict(local.get("strategy", {}))
    p.extra["comm_row_total"] = s.meter.total
    p.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in p.optimizer.param_groups]
    p.step, p.train_time, p.wall_offset = int(payload["step"]), float(payload["train_time"]), float(payload["wall_time"])
    p.tracker = EventTracker(p.tracker.metric, p.tracker.higher_is_better, p.tracker.threshold, payload["events"],
                             payload.get("event_state"))
    p.objective.load_state_dict(payload.get("objective", {}))
    p.prober.initial = dict(payload.get("probe_initial", {}))
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step and checkpoint; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def agreed(self, env: DistEnv) -> bool:
        if not env.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=env.device)
        return bool(env.all_reduce_sum(flag).item() > 0)


def train_loop(p: Parts, rd: RunDir, progress: Progress, stop: StopFlag,
               on_eval: Callable[[dict], None], on_events: Callable[[list], None]) -> str:
    """Run from ``p.step`` to the step budget. Returns the status: completed, interrupted, diverged,
    reached_target or out_of_time."""
    steps, eval_every, ckpt_every = p.cfg.train.steps, p.cfg.train.eval_every, p.cfg.train.checkpoint_every
    assert steps is not None and eval_every is not None
    start, wall0, sync = p.step, time.perf_counter() - p.wall_offset, _synchronizer(p.env.device)
    t_seg = time.perf_counter()
    p.prober.snapshot_initial(p.model)
    while True:
        fresh = not (p.step == start and start > 0)  # a resumed run does not repeat its checkpoint's row
        boundary = (p.step % eval_every == 0 or p.step == steps) and fresh
        probing = p.prober.due(p.step) and fresh and p.env.is_main
        saving = ckpt_every > 0 and p.step % ckpt_every == 0 and p.step != start and p.step != steps
        stopping = stop.agreed(p.env)
        if boundary or probing or saving or stopping:
            sync()
            p.train_time += time.perf_counter() - t_seg
            trace_rows = drain_trace(p)
            if p.env.is_main and trace_rows:
                rd.append_jsonl(rd.trace_path, trace_rows)
            if boundary or probing:
                wall = time.perf_counter() - wall0
                row = evaluate(p, wall) if boundary else timing_row(p, wall)
                if probing:
                    row.update(p.prober.run(p.model, p.step, row["lr"], rd.path))
                on_eval(row)
                new_events = p.tracker.update(row)
                on_events(new_events)
                ending = end_of_run(p, row, new_events, boundary)
                if ending:
                    return ending
            if saving or stopping:
                save_checkpoint(p, rd, time.perf_counter() - wall0)
            if stopping:
                return "interrupted"
            t_seg = time.perf_counter()
        if p.step >= steps:
            return "completed"
        p.prober.before_step(p.model, p.step)
        loss = train_step(p, p.step)
        p.step += 1
        progress.step(p.step, loss)


def end_of_run(p: Parts, row: dict[str, Any], new_events: list, evaluated: bool) -> str | None:
    """Why the run ends at this row, if it does. Targets and budgets are checked at evaluations only, which
    every process reaches together (probe-only rows happen on the main process alone)."""
    t = p.cfg.train
    if any(e.name == "diverged" for e in new_events):
        return "diverged"
    if evaluated and t.stop_at_target:
        if t.target_metric is None and p.tracker.fired("generalized"):
            return "reached_target"
        value = row.get(t.target_metric) if t.target_metric is not None else None
        if finite(value) and t.target is not None and value <= t.target:  # the allowed columns are losses
            return "reached_target"
    if evaluated and out_of_time(p):
        return "out_of_time"
    return None


def out_of_time(p: Parts) -> bool:
    """Whether the training-time budget is spent; every process follows the main one's clock, so all agree."""
    budget = p.cfg.train.time_budget
    if budget is None:
        return False
    if not p.env.distributed:
        return p.train_time >= budget
    flag = torch.tensor([1.0 if p.env.is_main and p.train_time >= budget else 0.0], device=p.env.device)
    return bool(p.env.all_reduce_sum(flag).item() > 0)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def output_dir(cfg: RunConfig, out: str | Path | None, runs_root: str | Path) -> Path:
    from trainlab.train.rundir import new_run_dir, timestamp

    if out is not None:
        return Path(out)
    name = cfg.train.name or f"{cfg.workload.name}-{cfg.optimizer.name}-{timestamp()}"
    return new_run_dir(Path(runs_root), name)
