"""The trainer's side of a task sequence: :class:`Continual`, built once per run with the rest of the Training.

It owns the sequence's tasks, their boundaries, the method (:mod:`trainlab.continual.methods`) and continual
evaluation, and the loop calls it at four points:

- :meth:`Continual.before_step`: the rows the step trains on, so the masked head (task-incremental, or a
  sequence that masks its loss to the present classes) knows each row's classes;
- :meth:`Continual.penalty`: the method's loss term;
- :meth:`Continual.after_step`: the method's per-step work, and at a task's end the method's and the optimizer's
  end-of-task work (EWC's Fisher; OGD's stored gradients through the optimizer protocol);
- :meth:`Continual.evaluate`: columns of every metrics row -- each task's validation accuracy and loss
  (``task{j}_acc``, ``task{j}_loss``, on at most ``continual.eval_examples`` examples per task), the mean over
  the tasks seen so far (``val_acc``), the mean over all tasks (``all_acc``) and the current task (``task``).

Evaluation is also dense right after every switch (:attr:`Continual.eval_steps`), so the stability gap (De Lange
et al. 2023) shows in the rows.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn

from trainlab.continual.methods import METHODS, Method, MethodContext
from trainlab.continual.sequence import Task, TaskSampler, TaskSequence, dense_steps, task_at, task_starts
from trainlab.workloads.base import Dataset


class Continual:
    def __init__(self, workload: TaskSequence, data: Dataset, tasks: list[Task], n_classes: int, options: Any, *,
                 loss: Any, seed: int, device: torch.device, total_steps: int) -> None:
        self.workload, self.tasks, self.options, self.device = workload, tasks, options, device
        self.scenario = workload.scenario
        self.starts = task_starts(tasks)
        self.ends = {start + task.steps: i for i, (start, task) in enumerate(zip(self.starts, tasks))}
        self.eval_steps = frozenset(dense_steps(self.starts, total_steps, options.dense_per_decade))
        self.n_classes = n_classes
        self._masks = [self._class_mask(task.classes) for task in tasks]
        self.mask: Tensor | None = None  # (batch, classes) of the step being trained (None: no mask)
        if self.masks_training:  # each training row's task, so a replayed row keeps its own task's classes
            self._row_task = torch.full((len(data.x_train),), -1, dtype=torch.long, device=device)
            for i, task in enumerate(tasks):
                self._row_task[task.train.to(device)] = i
            self._mask_table = torch.stack([m if m is not None else torch.ones(n_classes, dtype=torch.bool,
                                                                              device=device) for m in self._masks])
        self.method: Method = METHODS.get(options.method).factory(options, MethodContext(
            data=data, tasks=tasks, loss=loss, scenario=self.scenario, seed=seed, device=device, logits=self.logits))

    # --- the loop's hooks --------------------------------------------------------------------------------
    def attach(self, sampler: TaskSampler) -> None:
        self.method.attach(sampler)

    def before_step(self, rows: Tensor) -> None:
        """The class mask of each row the next step trains on (rows of the union training split)."""
        if self.masks_training:
            self.mask = self._mask_table[self._row_task[rows.to(self.device)]]

    def penalty(self, model: nn.Module) -> Tensor | None:
        return self.method.penalty(model)

    def after_step(self, step: int, rows: Tensor, model: nn.Module, optimizer_hooks: Any) -> None:
        """After step ``step`` (0-based) on ``rows``; at a task's last step, the end-of-task work."""
        self.method.after_step(step, rows, model)
        finished = self.ends.get(step + 1)
        if finished is not None:
            self.method.end_task(finished, model)
            if finished < len(self.tasks) - 1:  # after the last task nothing is trained that could use it
                optimizer_hooks.end_task(finished, lambda: self.logit_gradients(model, finished))

    def evaluate(self, model: nn.Module, step: int, autocast: Any) -> dict[str, Any]:
        """The evaluation columns of the metrics row of step ``step``: ``train_loss``/``train_acc`` on the current
        task's training examples, ``val_loss``/``val_acc`` the means over the tasks seen so far (the current one
        included), and per task ``task{j}_loss``/``task{j}_acc`` (every task, so that the accuracy matrix has its
        entries for tasks not trained yet: forward transfer); each on at most ``continual.eval_examples``
        examples per task."""
        current = min(task_at(self.starts, step), len(self.tasks) - 1)
        data, cap = self.method.ctx.data, self.options.eval_examples
        row: dict[str, Any] = {"task": current}
        model_was_training = model.training
        model.eval()
        with torch.no_grad(), autocast():
            row["train_loss"], row["train_acc"] = self._scores(model, data.x_train, data.y_train,
                                                               self.tasks[current].train[:cap], current)
            for j, task in enumerate(self.tasks):
                row[f"task{j}_loss"], row[f"task{j}_acc"] = self._scores(model, data.x_val, data.y_val,
                                                                         task.val[:cap], j)
        model.train(model_was_training)
        seen = range(current + 1)
        for key in ("loss", "acc"):
            row[f"val_{key}"] = sum(row[f"task{j}_{key}"] for j in seen) / len(seen)
        # over every task, trained or not: what a learner of the whole sequence has got so far (SCoLe's test on all
        # classes; its rise over a long sequence is Lesort et al.'s finding)
        row["all_acc"] = sum(row[f"task{j}_acc"] for j in range(len(self.tasks))) / len(self.tasks)
        return row

    def _scores(self, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, task: int) -> tuple[float, float]:
        """(mean loss, accuracy) on ``rows`` of ``x, y``, read as task ``task``'s examples."""
        rows = rows.to(x.device)
        xs, ys = x[rows], y[rows]
        scores = self.method.scores(model, xs, task)
        out = scores if scores is not None else self.logits(model, xs, task)
        return self.method.ctx.loss(out, ys).double().mean().item(), (out.argmax(-1) == ys).double().mean().item()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state.get("method", {}))

    # --- heads and gradients -------------------------------------------------------------------------------
    @property
    def masks_training(self) -> bool:
        """Whether training restricts the logits to the current task's classes (task-incremental, or a sequence
        that masks its loss to the present classes, as SCoLe does)."""
        return self.scenario == "task" or bool(getattr(self.workload.options, "mask_train", False))

    def logits(self, model: nn.Module, x: Tensor, task: int) -> Tensor:
        """The model's logits for inputs of task ``task`` as the scenario reads them: restricted to the task's
        classes when the task is known (task-incremental), all classes otherwise."""
        out = model(x)
        return self.masked(out, self._masks[task]) if self.scenario == "task" else out

    @staticmethod
    def masked(out: Tensor, mask: Tensor | None) -> Tensor:
        """``out`` with the logits of classes outside ``mask`` at -inf (None: unchanged)."""
        if mask is None:
            return out
        return out.masked_fill(~mask.to(out.device), float("-inf"))

    def _class_mask(self, classes: Tensor | None) -> Tensor | None:
        if classes is None:
            return None
        mask = torch.zeros(self.n_classes, dtype=torch.bool, device=self.device)
        mask[classes.to(self.device)] = True
        return mask

    def logit_gradients(self, model: nn.Module, task: int) -> Iterator[list[Tensor]]:
        """Per-example gradients of the true class's logit with respect to every trainable parameter, for the
        training examples of task ``task`` in a seeded random order (OGD's stored directions; Farajtabar et al.
        2020). Lazy: the optimizer takes as many as it keeps."""
        data = self.method.ctx.data
        rows = self.tasks[task].train
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.method.ctx.seed + task))]
        params = [p for p in model.parameters() if p.requires_grad]
        for r in rows.tolist():
            x, y = data.x_train[r:r + 1], data.y_train[r:r + 1]
            logit = self.logits(model, x, task)[0, y[0]]
            yield list(torch.autograd.grad(logit, params, allow_unused=True, retain_graph=False))


class MaskedHead(nn.Module):
    """The training network with the logits of classes outside the current task's set to -inf, when the
    :class:`Continual` says so (task-incremental training; SCoLe's loss on the present classes)."""

    def __init__(self, net: nn.Module, continual: Continual) -> None:
        super().__init__()
        self.net, self.continual = net, continual

    def forward(self, x: Tensor) -> Tensor:
        return Continual.masked(self.net(x), self.continual.mask)
