"""``power_law``: rehearsal of old tasks on a power-law schedule (Gandhi et al. 2024, "Catastrophic Interference
is Mitigated in Naturalistic Power-Law Learning Environments").

The paper's premise, from cognitive science (Anderson & Schooler 1991): in natural environments the probability
of meeting a task again falls as a power law of the time since it was last met; a learner that rehearses old
tasks on that schedule forgets less. The abstract gives neither the time unit nor the amounts, so this is trainlab's reading:

- memory: the reservoir buffer of :mod:`~trainlab.continual.methods.replay` (``continual.memory`` rows, default
  200, a uniform sample of every row trained on);
- at step ``s`` of task ``k``, task ``j < k`` (its training ended at step ``e_j``, the first step of task
  ``j + 1``) has the weight ``w_j = (1 + s - e_j)^(-a)``, ``a = continual.power_law_exponent`` (default 1), time
  in optimizer steps: 1 at the first step after the task, ``2^(-a)`` one step later, ...;
- ``continual.replay_batch`` (default 32) rows are added to the batch, each drawn independently: task ``j``
  with probability ``w_j / Σ_i w_i``, then one of its buffer rows uniformly (so with replacement, and a task's
  expected share of the replayed rows is exactly its weight's share, however many rows it has in the buffer).
  The current task is not rehearsed (its rows are the batch); during the first task nothing is.

Why a normalised mixture and not absolute probabilities ``w_j`` of replaying a row: with time in steps an absolute
``(1 + t)^(-1)`` falls below 1% within 100 steps, so the rehearsal would vanish early in each task and how early
would hinge on the time unit; normalised, only the ratios ``((1 + s - e_j) / (1 + s - e_i))^(-a)`` matter, which
stay between tasks seen at different times, and the rehearsal volume equals ``replay``'s, so the two methods
differ only in the schedule. The time since a task was *last trained* counts from the end of its own steps:
rehearsal does not reset it (rehearsing every old task at every step would reset every clock to 1 and make the
weights uniform).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trainlab.continual.methods.base import METHODS, MethodContext, seeded
from trainlab.continual.methods.replay import Replay
from trainlab.continual.sequence import task_starts


def power_law_weights(step: int, ends: list[int], exponent: float) -> Tensor:
    """``(1 + step - e_j)^(-exponent)`` for each task ``j`` whose training ended at step ``e_j <= step``, 0 for the
    others (the current task and those to come); float64, one entry per task."""
    ended = torch.tensor(ends, dtype=torch.float64)
    since = step - ended
    return torch.where(since >= 0, (1 + since.clamp(min=0)) ** -exponent, torch.zeros_like(since))


@METHODS.register("power_law", summary="rehearse old tasks from a reservoir buffer, each with weight (1 + steps "
                                       "since it was trained)^-continual.power_law_exponent",
                  paper="Gandhi et al. 2024, Catastrophic Interference is Mitigated in Naturalistic Power-Law "
                        "Learning Environments")
class PowerLawRehearsal(Replay):
    """Replay's buffer, with the replayed rows drawn by task on a power-law schedule (module docstring)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        super().__init__(options, ctx)
        self.ends = [start + task.steps for start, task in zip(task_starts(ctx.tasks), ctx.tasks)]
        self.row_task = torch.full((ctx.data.n_train,), -1, dtype=torch.long)  # each training row's task
        for i, task in enumerate(ctx.tasks):
            self.row_task[task.train.cpu()] = i

    def memory_rows(self, step: int) -> Tensor | None:
        tasks = self.row_task[self.buffer.rows]
        weights = power_law_weights(step, self.ends, self.options.power_law_exponent)
        counts = torch.bincount(tasks, minlength=len(self.ends)).to(torch.float64)
        per_row = weights[tasks] / counts[tasks]  # a task's weight shared by its rows in the buffer
        if len(per_row) == 0 or not bool((per_row > 0).any()):
            return None
        pick = torch.multinomial(per_row, self.options.replay_batch, replacement=True,
                                 generator=seeded(self.ctx.seed, "power_law", step))
        return self.buffer.rows[pick]
