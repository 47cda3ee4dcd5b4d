"""The training loop: :func:`train_loop` is the whole algorithm, :func:`train_step` one step of it.

It reads a :class:`~trainlab.train.training.Training` (built once from the config, never changed) and
advances a :class:`~trainlab.train.state.TrainState` (the step, the clocks, the events). Order inside one
iteration, at step ``s`` (``s`` optimizer steps already taken)::

    evaluate if s is 0, a multiple of eval_every, or the last step   (clock paused)
    probe if a probe is due at s                                      (clock paused)
    checkpoint if s is a multiple of checkpoint_every, or a stop was asked for
    set the lrs of step s; take the batch of s; one optimizer step; s += 1

A checkpoint at ``s`` therefore holds the state *after* the row of ``s`` was written; a resumed run continues
from there and does not repeat that row. The training clock counts the optimizer steps (with the batch
selection and lr setting that belong to them), never evaluation, logging or checkpointing.

Several processes (``torchrun``) train through a :class:`~trainlab.distributed.strategy.Strategy`: it wraps or
shards the model, builds the optimizer, takes its turn after every step (``after_step``: DiLoCo's outer step),
supplies the weights evaluation sees and the state checkpoints hold, and meters the bytes it communicates.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator, TypeGuard

import torch
from torch import Tensor, nn

from trainlab.distributed.env import DistEnv
from trainlab.train.evaluation import evaluate, timing_row
from trainlab.rundir import RunDir
from trainlab.train.runlog import RunLog
from trainlab.train.state import TrainState, save_checkpoint
from trainlab.train.training import Training


def train_loop(t: Training, s: TrainState, rd: RunDir, log: RunLog, stop: StopFlag) -> str:
    """Train from ``s.step`` to the step budget. Returns the status: completed, interrupted, diverged,
    reached_target or out_of_time."""
    steps, eval_every, ckpt_every = t.steps, t.cfg.train.eval_every, t.cfg.train.checkpoint_every
    assert eval_every is not None
    start, wall0, sync = s.step, time.perf_counter() - s.wall_offset, _synchronizer(t.env.device)
    t.prober.snapshot_initial(t.model)
    t_seg = time.perf_counter()
    while True:
        fresh = not (s.step == start and start > 0)  # a resumed run does not repeat its checkpoint's row
        evaluating = (s.step % eval_every == 0 or s.step == steps) and fresh
        probing = t.prober.due(s.step) and fresh and t.env.is_main
        saving = ckpt_every > 0 and s.step % ckpt_every == 0 and s.step not in (start, steps)
        stopping = stop.agreed(t.env)
        if evaluating or probing or saving or stopping:
            sync()
            s.train_time += time.perf_counter() - t_seg  # the clock pauses here
            log.trace(drain_trace(s))
            if evaluating or probing:
                wall = time.perf_counter() - wall0
                row = evaluate(t, s, wall) if evaluating else timing_row(t, s, wall)
                if probing:
                    row.update(t.prober.run(t.model, s.step, row["lr"], rd.path))
                log.row(row)
                new_events = s.tracker.update(row)
                log.events(new_events, s.tracker)
                ending = end_of_run(t, s, row, new_events, evaluating)
                if ending:
                    return ending
            if saving or stopping:
                save_checkpoint(t, s, rd, time.perf_counter() - wall0)
            if stopping:
                return "interrupted"
            t_seg = time.perf_counter()  # and runs again
        if s.step >= steps:
            return "completed"
        t.prober.before_step(t.model, s.step)
        loss = train_step(t, s)
        log.step(s.step, loss)


def train_step(t: Training, s: TrainState) -> Tensor:
    """Take optimizer step ``s.step`` on its batch and count it; returns the local mean loss (not synchronised)."""
    step = s.step
    t.set_lrs(step)
    idx = t.sampler.indices(step)
    x, y = t.data.x_train[idx], t.data.y_train[idx]
    with t.autocast():
        losses, penalty = t.objective(t.net, x, y, idx)
    t.optimizer.zero_grad(set_to_none=True)
    total = batch_loss(t, losses, step, len(idx))
    (total if penalty is None else total + penalty).backward()
    grad_norm = None
    if t.cfg.train.grad_clip is not None:
        grad_norm = s.grad_norm = _local(torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.train.grad_clip))
    elif t.cfg.train.trace:
        grad_norm = global_grad_norm(t.model)
    t.optimizer.step()
    t.strategy.after_step(step + 1)
    t.strategy.meter.end_step()
    loss = losses.detach().mean()
    t.hooks.observe(loss)  # self-tuning optimizers (AutoLRS) steer by the training loss they produced
    if t.cfg.train.trace:  # kept on the device; read at the next pause of the clock, so no per-step sync
        s.trace.append((step, t.logged_lr(step), loss, grad_norm))  # type: ignore[arg-type]
    s.step += 1
    return loss


def batch_loss(t: Training, losses: Tensor, step: int, local_examples: int) -> Tensor:
    """The loss this process differentiates.

    ``sum * world / global count`` is the global-batch mean after DDP averages gradients over processes, whatever
    the share sizes; with one process it is the plain mean. DiLoCo's workers do not average gradients: each
    minimises the mean over its own share (``strategy.local_loss``).
    """
    if t.strategy.local_loss:
        return losses.sum() / max(losses.numel(), 1)
    per_example = losses.numel() // max(local_examples, 1)
    global_count = len(t.sampler.global_indices(step)) * per_example
    return losses.sum() * (t.env.world_size / global_count)


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


def drain_trace(s: TrainState) -> list[dict[str, Any]]:
    """The recorded steps since the last call, as rows for trace.jsonl (one device sync for all)."""
    if not s.trace:
        return []
    values = torch.stack([torch.stack([loss.float(), norm.float().to(loss.device)]) for _, _, loss, norm in s.trace])
    rows = [{"step": step, "lr": lr, "loss": v[0], "grad_norm": v[1]}
            for (step, lr, _, _), v in zip(s.trace, values.tolist())]
    s.trace.clear()
    return rows


def end_of_run(t: Training, s: TrainState, row: dict[str, Any], new_events: list, evaluated: bool) -> str | None:
    """Why the run ends at this row, if it does. Targets and budgets are checked at evaluations only, which
    every process reaches together (probe-only rows happen on the main process alone)."""
    opts = t.cfg.train
    if any(e.name == "diverged" for e in new_events):
        return "diverged"
    if evaluated and opts.stop_at_target:
        if opts.target_metric is None and s.tracker.fired("generalized"):
            return "reached_target"
        value = row.get(opts.target_metric) if opts.target_metric is not None else None
        if finite(value) and opts.target is not None and value <= opts.target:  # the allowed columns are losses
            return "reached_target"
    if evaluated and out_of_time(t, s):
        return "out_of_time"
    return None


def out_of_time(t: Training, s: TrainState) -> bool:
    """Whether the training-time budget is spent; every process follows the main one's clock, so all agree."""
    budget = t.cfg.train.time_budget
    if budget is None:
        return False
    if not t.env.distributed:
        return s.train_time >= budget
    flag = torch.tensor([1.0 if t.env.is_main and s.train_time >= budget else 0.0], device=t.env.device)
    return bool(t.env.all_reduce_sum(flag).item() > 0)


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step and checkpoint; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def agreed(self, env: DistEnv) -> bool:
        if not env.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=env.device)
        return bool(env.all_reduce_sum(flag).item() > 0)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)
