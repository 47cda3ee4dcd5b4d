"""Metrics rows: evaluation on the whole train and validation splits, sharded over processes.

A row of step ``s`` describes the model after ``s`` optimizer steps. Its ``lr`` is the lr of the step about to
be taken (the last step's at the end of the run), from :meth:`Training.logged_lr` like every other lr trainlab
writes. Optimizers with separate evaluation weights (schedule-free) are switched to them around the evaluation
(:class:`~trainlab.optim.protocol.ModeSwitching`), once a step has been taken.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trainlab.train.state import TrainState
from trainlab.train.training import Training


@torch.no_grad()
def evaluate_split(t: Training, x: Tensor, y: Tensor, chunk: int = 1024) -> tuple[float, float]:
    """(mean loss, mean metric) over a split, sharded across processes and summed with all-reduce."""
    limit = min(t.cfg.train.eval_examples or len(x), len(x))
    shard = torch.tensor_split(torch.arange(limit), t.env.world_size)[t.env.rank]
    sums = torch.zeros(3, dtype=torch.float64, device=t.env.device)
    # fsdp's forward is a collective (it all-gathers the parameters): every process makes the same number of calls
    calls = math.ceil(math.ceil(limit / t.env.world_size) / chunk) if t.strategy.lockstep_forward else 0
    for i in range(0, max(len(shard), calls * chunk), chunk):
        if i >= len(shard):
            with t.autocast():
                t.model(x[:1])  # a shorter share: keep step with the other processes' gathers
            continue
        idx = shard[i:i + chunk].to(t.env.device)
        with t.autocast():
            out = t.model(x[idx])
        losses, values = t.objective.primary(out, y[idx]), t.workload.metric_values(out, y[idx])
        count = torch.tensor(losses.numel(), device=sums.device, dtype=torch.float64)
        sums += torch.stack([losses.double().sum(), values.double().sum(), count])
    t.env.all_reduce_sum(sums)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def evaluate(t: Training, s: TrainState, wall: float) -> dict[str, Any]:
    """The metrics row of step ``s.step``: losses and the workload's metric on both splits."""
    metric = t.workload.metric
    # Before the first step there is nothing averaged yet (some schedule-free implementations fail on empty state).
    switch = s.step > 0
    if switch:
        t.hooks.eval_mode()
    t.model.eval()
    with t.strategy.eval_weights():  # DiLoCo: the global model
        if t.continual is not None:  # a task sequence: per task, on the current task and the tasks seen so far
            scores = t.continual.evaluate(t.model, s.step, t.autocast)
        else:
            train_loss, train_metric = evaluate_split(t, t.data.x_train, t.data.y_train)
            val_loss, val_metric = evaluate_split(t, t.data.x_val, t.data.y_val)
            scores = {"train_loss": train_loss, f"train_{metric}": train_metric, "val_loss": val_loss,
                      f"val_{metric}": val_metric}
    t.model.train()
    if switch:
        t.hooks.train_mode()
    row = {**timing_row(t, s, wall), **scores}
    if s.grad_norm is not None:
        row["grad_norm"] = float(s.grad_norm)
    if t.strategy.active:
        row.update(comm_columns(t, s))
    if t.federation is not None:  # simulated time, bytes, client updates: what federated runs are compared by
        row.update(t.federation.columns())
    return row


def timing_row(t: Training, s: TrainState, wall: float) -> dict[str, Any]:
    """Where and when: the row of a step probed between evaluations, and the head of every metrics row.

    ``time`` and ``cpu_time`` are the training clocks (wall and this process's CPU seconds of optimizer steps,
    :mod:`trainlab.train.loop`); ``wall`` is the wall time since the run began, everything included."""
    return {"step": s.step, "time": round(s.train_time, 6), "cpu_time": round(s.cpu_time, 6), "wall": round(wall, 3),
            "lr": t.logged_lr(min(s.step, t.steps - 1))}


def comm_columns(t: Training, s: TrainState) -> dict[str, int]:
    """This process's payload bytes (see trainlab.distributed.comm): since the previous row, last step, in total."""
    meter = t.strategy.meter
    since = meter.total - s.comm_logged
    s.comm_logged = meter.total
    return {"comm_bytes": since, "comm_bytes_step": meter.last_step, "comm_bytes_total": meter.total}
