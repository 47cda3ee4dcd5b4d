"""The :class:`Method` protocol, its context and the :data:`METHODS` registry (naive fine-tuning registered here).

A method is a :class:`Method` subclass registered in :data:`METHODS` (``continual.method=NAME``; ``trainlab list
methods``). The trainer (:class:`~trainlab.continual.controller.Continual`) calls its hooks, each a no-op in the
base class, which is naive fine-tuning:

- :meth:`Method.attach` once, with the run's :class:`~trainlab.continual.sequence.TaskSampler` (replay adds rows
  of earlier tasks to every batch through ``sampler.memory``);
- :meth:`Method.penalty` every step: a term added to the loss (EWC's quadratic penalty);
- :meth:`Method.after_step` after every optimizer step, with the rows it trained on (a reservoir buffer's update;
  refresh learning's unlearning step);
- :meth:`Method.end_task` when a task's last step is done (EWC's Fisher), right after that step's
  :meth:`Method.after_step`;
- :meth:`Method.scores` at evaluation: class scores to use instead of the model's head (NMC), or None;
- :meth:`Method.state_dict` / :meth:`Method.load_state_dict`: everything the method keeps (buffers, Fishers),
  so that a resumed run continues bit for bit.

Randomness of a method comes from :func:`seeded` generators, each a pure function of the run's seed, a purpose
and a step or task: nothing is drawn from the global generator, so a method never shifts the batches, the
initialisation or dropout of the run it is added to, and resuming needs no generator state.

Optimizer-level methods (OGD, SketchOGD) are optimizer wrappers (``optimizer=ogd optimizer.base=sgd``) that are
told each task's end through the optimizer protocol (:class:`~trainlab.optim.protocol.TaskAware`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainlab.registry import Registry
from trainlab.workloads.base import Dataset  # first: the workloads package imports the task sequences itself
from trainlab.continual.sequence import Task, TaskSampler


@dataclass
class MethodContext:
    """What a method may use: the data, the tasks, the loss, the scenario and where to compute."""

    data: Dataset  # the union of the tasks' data, on ``device``
    tasks: list[Task]
    loss: Callable[[Tensor, Tensor], Tensor]  # per-example primary loss (output, target)
    scenario: str
    seed: int
    device: torch.device
    logits: Callable[[nn.Module, Tensor, int], Tensor]  # (model, x, task) -> logits as the scenario masks them


class Method:
    """Naive fine-tuning: train on each task in turn, nothing else (the lower baseline of every comparison)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        self.options, self.ctx = options, ctx

    def attach(self, sampler: TaskSampler) -> None:
        """Called once when the run is built."""

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A term added to the training loss of every step, or None."""
        return None

    def after_step(self, step: int, rows: Tensor, model: nn.Module) -> None:
        """After optimizer step ``step`` (0-based), which trained on the union-data ``rows`` (this process's share
        of the batch, memory rows included)."""

    def end_task(self, task: int, model: nn.Module) -> None:
        """After the last step of task ``task``."""

    def scores(self, model: nn.Module, x: Tensor, task: int) -> Tensor | None:
        """Class scores for inputs ``x`` of task ``task`` at evaluation, or None for the model's own logits."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""


def seeded(seed: int, purpose: str, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (run seed, purpose, step or task): independent streams for every purpose and
    index, none of them the global generator's. (A hash, not ``seed * k + index``: seeds are 32-bit and indices
    unbounded, so an affine mix could overflow the 64 bits ``manual_seed`` takes.)"""
    digest = hashlib.blake2b(f"{seed}/{purpose}/{index}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") % 2**63)


def parameters(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name (the names key a method's per-parameter state in its checkpoint)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


METHODS: Registry[type[Method]] = Registry("continual method")
METHODS.add("naive", Method, summary="fine-tune on each task in turn (the lower baseline)", paper="")
