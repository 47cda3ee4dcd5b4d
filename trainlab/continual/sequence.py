"""Task sequences: a workload that is learned one task after another.

A :class:`TaskSequence` is a :class:`~trainlab.workloads.base.Workload` whose data are the union of its tasks'
data (one :class:`~trainlab.workloads.base.Dataset`, so models, evaluation and probes work unchanged) plus a
list of :class:`Task` s that say which rows belong to each task, which classes it has and how many steps it
trains. The run's step budget is the sum of the tasks' (``steps`` left unset); task ``i`` trains on steps
``[start_i, start_i + steps_i)``.

Scenarios (van de Ven & Tolias 2019; the names Avalanche uses):

- ``class``: class-incremental -- one output layer over every class; evaluation asks for the class among all.
- ``task``: task-incremental -- the task is known: training and evaluation restrict the logits to the task's
  classes (a multi-head model written as one masked head).
- ``domain``: domain-incremental -- every task has the same classes in another input distribution (e.g. a
  permutation of the inputs); one head, no masks.

:class:`TaskSampler` draws the batches of a sequence as a pure function of (seed, step) like
:class:`~trainlab.train.data.BatchSampler`, from the current task's rows only; a method may add rows of
earlier tasks (replay) through :attr:`TaskSampler.memory`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Literal, cast

import torch
from torch import Tensor

from trainlab.errors import ConfigError
from trainlab.workloads.base import Dataset, InputKind, Workload

Scenario = Literal["class", "task", "domain"]


@dataclass(frozen=True)
class Task:
    """One task of a sequence: its rows of the union data, its classes and its step budget."""

    name: str
    train: Tensor  # row indices into the union training split
    val: Tensor  # row indices into the union validation split
    classes: Tensor | None  # the labels this task uses (None: every class, as in domain-incremental sequences)
    steps: int


class TaskSequence(Workload):
    """Base class of task-sequence workloads. Subclasses implement :meth:`build` (data and tasks of one input
    kind, deterministic in the options' seed) and set ``scenario`` from their options."""

    metric = "acc"
    higher_is_better = True
    threshold = 0.9

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._built: dict[str, tuple[Dataset, list[Task]]] = {}

    # --- to implement -------------------------------------------------------------------------------
    def build(self, kind: InputKind) -> tuple[Dataset, list[Task]]:
        raise NotImplementedError

    @property
    def scenario(self) -> Scenario:
        return cast(Scenario, getattr(self.options, "scenario"))

    @classmethod
    def budget(cls, options: Any) -> int:
        """The whole sequence's steps: ``steps_per_task`` times the number of tasks (override for others)."""
        return int(options.steps_per_task) * cls.task_count(options)

    @classmethod
    def task_count(cls, options: Any) -> int:
        return int(options.tasks)

    # --- provided -------------------------------------------------------------------------------------
    def data(self, kind: InputKind) -> Dataset:
        return self._build(kind)[0]

    def tasks(self, kind: InputKind) -> list[Task]:
        return self._build(kind)[1]

    def _build(self, kind: InputKind) -> tuple[Dataset, list[Task]]:
        kind = self.check_kind(kind)
        if kind not in self._built:
            self._built[kind] = self.build(kind)
        return self._built[kind]


def task_starts(tasks: list[Task]) -> list[int]:
    """The first step of each task (the boundaries; the first is 0)."""
    starts, step = [], 0
    for task in tasks:
        starts.append(step)
        step += task.steps
    return starts


def task_at(starts: list[int], step: int) -> int:
    """The index of the task that step ``step`` trains (the last task for steps past the end)."""
    return max(0, bisect.bisect_right(starts, step) - 1)


def dense_steps(starts: list[int], total: int, per_decade: int) -> set[int]:
    """Extra evaluation steps right after each task switch: ``per_decade`` log-spaced points per decade of steps
    since the switch, until the next switch (De Lange et al. evaluate every step; these are enough to draw the
    stability gap's dip and recovery). The switch steps themselves are included."""
    out: set[int] = set()
    ends = [*starts[1:], total]
    for start, end in zip(starts, ends):
        out.add(start)
        if per_decade <= 0:
            continue
        k = 0
        while True:
            offset = round(10 ** (k / per_decade))
            if start + offset >= end:
                break
            out.add(start + offset)
            k += 1
    return {s for s in out if 0 <= s <= total}


class TaskSampler:
    """Batches of a task sequence: step ``s`` of task ``i`` takes its ``s - start_i``-th batch of a permutation
    of task ``i``'s training rows (epoch ``e`` of task ``i`` permuted by a generator seeded from ``(seed, i,
    e)``), plus the rows :attr:`memory` returns for that step (a method's replay; ``None``: none).

    A pure function of (seed, step) except for :attr:`memory`, whose state the method checkpoints. Under DDP each
    process takes its contiguous share of the global batch, as :class:`~trainlab.train.data.BatchSampler` does.
    """

    def __init__(self, tasks: list[Task], batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.tasks, self.seed, self.rank, self.world_size = tasks, seed, rank, world_size
        self.starts = task_starts(tasks)
        self.batch_size = batch_size
        smallest = min(len(t.train) for t in tasks)
        if batch_size > smallest:
            raise ConfigError("batch_size", f"{batch_size} exceeds the {smallest} training examples of the sequence's "
                                            "smallest task; batch_size=0 trains each task on its full batch")
        self.memory: Callable[[int], Tensor | None] | None = None
        self._key: tuple[int, int] | None = None
        self._perm = torch.arange(0)

    @property
    def full_batch(self) -> bool:
        return self.batch_size <= 0

    def task(self, step: int) -> int:
        return task_at(self.starts, step)

    def current(self, step: int) -> Tensor:
        """The rows of the current task that step ``step`` trains on (without memory rows)."""
        i = self.task(step)
        rows = self.tasks[i].train
        if self.full_batch:
            return rows
        per_epoch = len(rows) // self.batch_size
        epoch, pos = divmod(step - self.starts[i], per_epoch)
        if self._key != (i, epoch):
            # (mod 2^63: a 32-bit seed times the two factors would overflow the generator's seed)
            gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + i) * 1_000_003 + epoch) % 2**63)
            self._perm, self._key = rows[torch.randperm(len(rows), generator=gen)], (i, epoch)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def global_indices(self, step: int) -> Tensor:
        rows = self.current(step)
        extra = self.memory(step) if self.memory is not None else None
        return rows if extra is None or len(extra) == 0 else torch.cat([rows, extra])

    def indices(self, step: int) -> Tensor:
        """This process's share of the global batch of ``step``."""
        idx = self.global_indices(step)
        return idx if self.world_size == 1 else torch.tensor_split(idx, self.world_size)[self.rank]
