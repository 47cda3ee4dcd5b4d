"""What an optimizer may offer a training loop beyond ``step()``: the declared protocol.

Three optional capabilities, each a :class:`typing.Protocol` an optimizer implements by having the methods:

- :class:`ModeSwitching` -- ``train()`` / ``eval()``: optimizers whose evaluation weights differ from the
  weights they step (schedule-free AdamW/SGD, Defazio et al. 2024). The loop calls ``train()`` once before the
  first step and ``eval()`` ... ``train()`` around every evaluation after the first step (before it nothing is
  averaged yet, and some implementations fail on empty state).
- :class:`LossObserving` -- ``observe_loss(loss)``: self-tuning optimizers that steer by the training loss they
  produced (AutoLRS, Jin et al. 2021). Called after every step with the step's mean batch loss (a 0-dim tensor,
  not synchronised across processes).
- :class:`SelfScheduling` -- ``current_lr()``: optimizers that set their own learning rate (AutoLRS). The value
  logged as ``lr`` is then theirs (the lr of the last step taken), not the configured schedule's.
- :class:`TaskAware` -- ``end_task(task, gradients)``: continual-learning optimizers that keep something of each
  finished task (OGD's and SketchOGD's gradient subspace, Farajtabar et al. 2020, Wright et al. 2023). In a
  task sequence the loop calls it after the last step of every task but the last; ``gradients()`` yields, per training example of that
  task, the gradients of its true class's logit as a list aligned with the optimizer's parameters (None for a
  parameter the logit does not depend on).

:func:`capabilities` reads them once, when a run is built; the loop never probes an optimizer with ``getattr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["ModeSwitching", "LossObserving", "SelfScheduling", "TaskAware", "Capabilities", "capabilities"]


@runtime_checkable
class ModeSwitching(Protocol):
    """Evaluation weights differ from training weights: ``eval()`` before evaluating, ``train()`` after."""

    def train(self) -> Any: ...

    def eval(self) -> Any: ...


@runtime_checkable
class LossObserving(Protocol):
    """Told every step's training loss (a 0-dim tensor) after the step."""

    def observe_loss(self, loss: Any) -> Any: ...


@runtime_checkable
class SelfScheduling(Protocol):
    """Sets its own learning rate; ``current_lr()`` is the lr of the last step it took."""

    def current_lr(self) -> float: ...


@runtime_checkable
class TaskAware(Protocol):
    """Told when a task of a sequence ends, with a way to compute that task's logit gradients."""

    def end_task(self, task: int, gradients: Callable[[], Iterable[list[Tensor | None]]]) -> Any: ...


@dataclass(frozen=True)
class Capabilities:
    """Which parts of the protocol one optimizer implements (read once by :func:`capabilities`)."""

    optimizer: Any
    modes: bool = False
    observes_loss: bool = False
    sets_own_lr: bool = False
    task_aware: bool = False

    def train_mode(self) -> None:
        if self.modes:
            self.optimizer.train()

    def eval_mode(self) -> None:
        if self.modes:
            self.optimizer.eval()

    def observe(self, loss: Any) -> None:
        if self.observes_loss:
            self.optimizer.observe_loss(loss)

    def end_task(self, task: int, gradients: Callable[[], Iterable[list[Tensor | None]]]) -> None:
        if self.task_aware:
            self.optimizer.end_task(task, gradients)

    def own_lr(self) -> float | None:
        """The optimizer's own lr of its last step, or None when the configured schedule sets the lr."""
        return float(self.optimizer.current_lr()) if self.sets_own_lr else None

    def names(self) -> list[str]:
        """The implemented parts, for messages (e.g. why a strategy cannot wrap this optimizer)."""
        return [name for name, on in (("train()/eval()", self.modes), ("observe_loss()", self.observes_loss),
                                      ("current_lr()", self.sets_own_lr), ("end_task()", self.task_aware)) if on]


def capabilities(optimizer: Any) -> Capabilities:
    """The parts of the protocol ``optimizer`` implements."""
    return Capabilities(optimizer, modes=isinstance(optimizer, ModeSwitching),
                        observes_loss=isinstance(optimizer, LossObserving),
                        sets_own_lr=isinstance(optimizer, SelfScheduling), task_aware=isinstance(optimizer, TaskAware))
