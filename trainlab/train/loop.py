"""The training loop: :func:`train_loop` is the whole algorithm, :func:`train_step` one step of it.

It reads a :class:`~trainlab.train.training.Training` (built once from the config, never changed) and
advances a :class:`~trainlab.train.state.TrainState` (the step, the clocks, the events). Order inside one
iteration, at step ``s`` (``s`` optimizer steps already taken)::

    look at the training losses of the steps taken since the last look   (see LossWatch)
    evaluate if s is 0, a multiple of eval_every, or the last step   (clock paused)
    probe if a probe is due at s                                      (clock paused)
    checkpoint if s is a multiple of checkpoint_every, a stop was asked for, or the run ends here
    set the lrs of step s; take the batch of s; one optimizer step; s += 1

A checkpoint at ``s`` therefore holds the state *after* the row of ``s`` was written; a resumed run continues
from there and does not repeat that row. The training clock counts the optimizer steps (with the batch
selection and lr setting that belong to them), never evaluation, logging or checkpointing. It is two clocks
started and stopped together (:class:`Clocks`): wall seconds (``train_time``, the row's ``time``) and the
process's CPU seconds (``cpu_time``: every thread of this process, so two torch threads cost twice one), which a
busy neighbour on the same cores barely moves. The CPU clock counts this process only: work in other processes
(Ray clients of a federated run) and on an accelerator is not in it.

Nothing that is not finite is kept: a step whose training loss is NaN or inf, or a checkpoint about to be
written that holds such a tensor (:func:`~trainlab.train.state.prepare_checkpoint`), ends the run as
``diverged`` there, not at the next evaluation. The stop's metrics row evaluates the state the run stopped in and
carries a ``diverged`` column saying what was not finite; no checkpoint is written after the last finite one.

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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeGuard

import torch
from torch import Tensor, nn

from trainlab.distributed.env import DistEnv
from trainlab.train.evaluation import evaluate, timing_row
from trainlab.train.events import Event
from trainlab.rundir import RunDir
from trainlab.train.runlog import RunLog
from trainlab.train.state import TrainState, prepare_checkpoint, write_checkpoint
from trainlab.train.training import Training


FINITE_CHECK_EVERY = 16  # steps between looks at the training losses where a look costs a device sync


def train_loop(t: Training, s: TrainState, rd: RunDir, log: RunLog, stop: StopFlag) -> str:
    """Train from ``s.step`` to the step budget. Returns the status: completed, interrupted, diverged,
    reached_target or out_of_time."""
    steps, eval_every, ckpt_every = t.steps, t.cfg.train.eval_every, t.cfg.train.checkpoint_every
    assert eval_every is not None
    start, wall0, sync = s.step, time.perf_counter() - s.wall_offset, _synchronizer(t.env.device)
    watch = LossWatch(t)
    t.prober.snapshot_initial(t.model)
    clocks = Clocks()
    while True:
        fresh = not (s.step == start and start > 0)  # a resumed run does not repeat its checkpoint's row
        due = Pause(evaluating=(s.step % eval_every == 0 or s.step == steps or s.step in t.eval_steps) and fresh,
                    probing=t.prober.due(s.step) and fresh and t.env.is_main,
                    saving=ckpt_every > 0 and s.step % ckpt_every == 0 and s.step not in (start, steps),
                    stopping=stop.agreed(t.env))
        bad_loss = watch.first_nonfinite() if watch.due(s.step, due) else None
        if due.any or bad_loss:
            sync()
            clocks.pause(s)  # the clocks pause here
            log.trace(drain_trace(s))
            if bad_loss:
                return stop_diverged(s, log, evaluate(t, s, time.perf_counter() - wall0),
                                     [s.tracker.record(loss_divergence(s, *bad_loss))])
            ending = pause(t, s, rd, log, wall0, due)
            if ending:
                return ending
            clocks.run()  # and run again
        if s.step >= steps:
            return "completed"
        t.prober.before_step(t.model, s.step)
        if t.pruner is not None and t.env.is_main:  # the weights a later run may rewind to (prune.rewind_step)
            t.pruner.keep_rewind_point(s.step, rd.path)
        loss = train_step(t, s)
        watch.add(s.step - 1, loss)  # the step just taken
        log.step(s.step, loss)


class Clocks:
    """The training clocks' current segment: it starts at :meth:`run` (and when built) and its wall seconds
    (``time.perf_counter``) and process CPU seconds (``time.process_time``) are added to ``s.train_time`` and
    ``s.cpu_time`` at :meth:`pause`, so both clocks always count exactly the same stretches of the loop."""

    def __init__(self) -> None:
        self.run()

    def run(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def pause(self, s: TrainState) -> None:
        s.train_time += time.perf_counter() - self.wall
        s.cpu_time += time.process_time() - self.cpu


@dataclass(frozen=True)
class Pause:
    """What the loop does at one step with the clock paused (nothing when all are False)."""

    evaluating: bool
    probing: bool  # on the main process alone
    saving: bool  # a checkpoint_every checkpoint
    stopping: bool  # a stop was asked for (on any process)

    @property
    def together(self) -> bool:
        """Whether every process pauses here (all but probe-only pauses): only then may they communicate."""
        return self.evaluating or self.saving or self.stopping

    @property
    def any(self) -> bool:
        return self.together or self.probing


def pause(t: Training, s: TrainState, rd: RunDir, log: RunLog, wall0: float, due: Pause) -> str | None:
    """Evaluate, probe and checkpoint at step ``s.step`` as ``due`` says (the clock is paused); returns why the
    run ends here, if it does.

    A checkpoint is built and checked before the step's row is logged, so that a state found not finite ends
    the run with a row that says so; it is written after the row, so a checkpoint's row is always in the log.
    """
    row, new, wall = None, [], time.perf_counter() - wall0
    if due.evaluating or due.probing:
        row = evaluate(t, s, wall) if due.evaluating else timing_row(t, s, wall)
        if due.probing:
            row.update(t.prober.run(t.model, s.step, row["lr"], rd.path))
        if t.pruner is not None:  # the fraction of prunable weights the masks zero (counted at pruning steps)
            row["sparsity"] = t.pruner.sparsity()
        new = s.tracker.update(row)
    ending = end_of_run(t, s, row, new, due.evaluating) if row is not None else None
    if ending == "diverged":
        assert row is not None
        return stop_diverged(s, log, row, new)
    checkpointing = due.saving or due.stopping or ending is not None
    payload, found = prepare_checkpoint(t, s, time.perf_counter() - wall0) if checkpointing else (None, None)
    if found is not None:
        event = s.tracker.record(Event("diverged", s.step, s.train_time, None, found,
                                       f"{found} is not finite at step {s.step}; its checkpoint was not written"))
        return stop_diverged(s, log, row if row is not None else evaluate(t, s, wall), [*new, event])
    if row is not None:
        log.row(row)
    log.events(new, s.tracker)
    if checkpointing:
        write_checkpoint(s, rd, payload)
    return ending or ("interrupted" if due.stopping else None)


def stop_diverged(s: TrainState, log: RunLog, row: dict[str, Any], new: list[Event]) -> str:
    """End the run at a state that is not finite: the row of the stop (an evaluation of that state) gets a
    ``diverged`` column with the event's detail, so the last row of a diverged run never reads as a healthy one;
    nothing is checkpointed."""
    event = s.tracker.fired("diverged")
    assert event is not None
    row["diverged"] = event.detail
    log.row(row)
    log.events(new, s.tracker)
    return "diverged"


def loss_divergence(s: TrainState, step: int, loss: float) -> Event:
    """The ``diverged`` event of a step whose training loss (the mean over its batch) was ``loss``."""
    return Event("diverged", step, s.train_time, None, "loss", f"the training loss of step {step} is {loss}")


def look_every(env: DistEnv) -> int:
    """Steps between looks at the training losses: every step where reading them is free (one process on a CPU),
    else :data:`FINITE_CHECK_EVERY`."""
    return 1 if env.device.type == "cpu" and not env.distributed else FINITE_CHECK_EVERY


class LossWatch:
    """The training losses of the steps since the last look, kept on the device and read all at once.

    One process on a CPU looks after every step: its ops have run by the time ``train_step`` returns, so reading
    a scalar costs nothing, and a run stops right after its first step whose loss is not finite. On an accelerator
    a read waits for the device, and several processes must agree (one all-reduce of the pending losses: any NaN
    or inf makes their sum NaN or inf); there it looks every :data:`FINITE_CHECK_EVERY` steps and at every pause
    of the clock: at most that many steps late, and still naming the first step whose loss was not finite.

    Optimizers that steer by the training loss (AutoLRS: ``observes_loss``) try learning rates that may diverge and
    roll them back themselves; their losses are not watched (their checkpoints are still checked).
    """

    def __init__(self, t: Training) -> None:
        self.env = t.env
        self.every = look_every(t.env)
        self.watching = not t.hooks.observes_loss
        self.first = 0  # the step of losses[0]
        self.losses: list[Tensor] = []

    def add(self, step: int, loss: Tensor) -> None:
        """Keep the loss of ``step`` (a device scalar) for the next look."""
        if self.watching:
            self.first = step if not self.losses else self.first
            self.losses.append(loss)

    def due(self, step: int, pause: Pause) -> bool:
        """Whether to look at step ``step``; every process answers alike (a look may be collective)."""
        return step % self.every == 0 or pause.together or (pause.probing and not self.env.distributed)

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(step, loss) of the first kept step whose loss was NaN or inf on any process, or None; forgets them."""
        if not self.losses:
            return None
        losses = self.env.all_reduce_sum(torch.stack(self.losses))  # one dtype: every step's loss is alike
        self.losses.clear()
        values = losses.tolist()  # one read of the device for all the steps
        i = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        return None if i is None else (self.first + i, values[i])


def train_step(t: Training, s: TrainState) -> Tensor:
    """Take optimizer step ``s.step`` on its batch and count it; returns the local mean loss (not synchronised)."""
    if t.federation is not None:
        return server_step(t, s)
    step = s.step
    t.set_lrs(step)
    idx = t.sampler.indices(step)
    x, y = t.data.x_train[idx], t.data.y_train[idx]
    if t.continual is not None:
        t.continual.before_step(idx)
    total, loss = step_loss(t, x, y, idx, step)
    t.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if t.pruner is not None:  # clipping, the traced norm and the optimizer's moments see the sub-network only
        t.pruner.mask_grads_()
    grad_norm = None
    if t.cfg.train.grad_clip is not None:
        grad_norm = s.grad_norm = _local(torch.nn.utils.clip_grad_norm_(t.parameters(), t.cfg.train.grad_clip))
    elif t.cfg.train.trace:
        grad_norm = global_grad_norm(t.parameters())
    t.optimizer.step()
    t.strategy.after_step(step + 1)
    t.strategy.meter.end_step()
    t.hooks.observe(loss)  # self-tuning optimizers (AutoLRS) steer by the training loss they produced
    if t.cfg.train.trace:  # kept on the device; read at the next pause of the clock, so no per-step sync
        s.trace.append((step, t.logged_lr(step), loss, grad_norm))  # type: ignore[arg-type]
    if t.continual is not None:  # the method's per-step work; at a task's last step, its end-of-task work
        t.continual.after_step(step, idx, t.model, t.hooks)
    if t.pruner is not None:  # last: nothing the step did (decay, momentum, a method's update) revives a weight
        t.pruner.after_step(step + 1)
    s.step += 1
    return loss


def server_step(t: Training, s: TrainState) -> Tensor:
    """A federated run's step ``s.step``: play the clients to the next server update (``fed.strategy``), take
    their aggregated delta as the gradient of the server's weights, step the server's optimizer. Returns the
    aggregated arrivals' mean local training loss."""
    assert t.federation is not None
    step = s.step
    t.set_lrs(step)
    t.optimizer.zero_grad(set_to_none=True)
    loss = torch.tensor(t.federation.gradient_(t.model))
    grad_norm = None
    if t.cfg.train.grad_clip is not None:
        grad_norm = s.grad_norm = torch.nn.utils.clip_grad_norm_(t.parameters(), t.cfg.train.grad_clip)
    elif t.cfg.train.trace:
        grad_norm = global_grad_norm(t.parameters())
    t.optimizer.step()
    t.federation.updated()  # the clients waiting for the new weights get them now
    t.hooks.observe(loss)
    if t.cfg.train.trace:
        s.trace.append((step, t.logged_lr(step), loss, grad_norm))  # type: ignore[arg-type]
    s.step += 1
    return loss


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


def step_loss(t: Training, x: Tensor, y: Tensor, idx: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """(what this process differentiates: its part of the global batch's mean loss plus any penalty, the local
    mean loss, detached, for the trace).

    With one process and a plain objective the loss kernel reduces the batch itself
    (:meth:`~trainlab.losses.objective.Objective.mean`): the per-example losses are needed for nothing else, and
    reducing them here took a sum, a scale and their backward ops (estimated at 70-130 µs, ~2% of a small CNN's
    step; below the noise of the before/after runs in benchmarks/RESULTS.md).
    """
    if t.env.world_size == 1 and t.objective.plain:
        with t.autocast():
            mean = t.objective.mean(t.net, x, y)
            penalty = t.continual.penalty(t.model) if t.continual is not None else None
        return _plus(mean, penalty), mean.detach()
    with t.autocast():
        losses, penalty = t.objective(t.net, x, y, idx, step)
        if t.continual is not None:  # a continual method's term (EWC's quadratic penalty)
            penalty = _add(penalty, t.continual.penalty(t.model))
    return _plus(batch_loss(t, losses, step, len(idx)), penalty), losses.detach().mean()


def batch_loss(t: Training, losses: Tensor, step: int, local_examples: int) -> Tensor:
    """The loss this process differentiates.

    ``sum * world / global count`` is the global-batch mean after DDP averages gradients over processes, whatever
    the share sizes; with one process it is the plain mean. DiLoCo's workers do not average gradients: each
    minimises the mean over its own share (``strategy.local_loss``).
    """
    if t.strategy.local_loss:
        return losses.sum() / max(losses.numel(), 1)
    per_example = losses.numel() // max(local_examples, 1)
    global_count = global_examples(t, step, local_examples) * per_example
    return losses.sum() * (t.env.world_size / global_count)


def global_examples(t: Training, step: int, local_examples: int) -> int:
    """How many examples the global batch of step ``step`` has, this process's share being ``local_examples``.

    A sampler of one share hands this process the whole global batch, so the count is the local one; asking the
    sampler again would draw the batch a second time (a slice, or a ``randperm`` for a curriculum or a replay
    method's memory rows) for the same number.
    """
    return local_examples if t.sampler.world_size == 1 else len(t.sampler.global_indices(step))


def global_grad_norm(params: Iterable[Tensor] | nn.Module) -> Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ measures), as a device scalar.

    ``params``: the parameters, in ``model.parameters()`` order (the step passes :meth:`Training.parameters`, a
    list kept at build time), or a module, whose parameters are walked (the reference the kept list is tested
    against).
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    grads = [q.grad for q in params if q.grad is not None]
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
    if evaluated and s.step >= t.steps:
        return "completed"
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
    """SIGINT/SIGTERM ask the loop to stop after the current step and checkpoint; a second Ctrl-C aborts.

    ``signum`` is the signal that asked first: ``trainlab run`` exits with 128 + its number (130 for Ctrl-C,
    143 for SIGTERM, the shell's convention), so that a script or a scheduler does not take a stopped run for a
    finished one. Under torchrun a process that stops because another one was signalled adopts that signal
    (:meth:`agreed`), so every process of the launch exits alike.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.signum is None:
                self.signum = signum

        previous = {sig: signal.signal(sig, handler) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def agreed(self, env: DistEnv) -> bool:
        """Whether any process was asked to stop (every process must stop at the same step)."""
        if not env.distributed:
            return self.requested
        flags = torch.tensor([float(self.signum == sig) for sig in self.SIGNALS], device=env.device)
        counts = env.all_reduce_sum(flags).tolist()
        if self.signum is None and any(counts):
            self.signum = next(sig for sig, n in zip(self.SIGNALS, counts) if n)
        return any(counts)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)
