"""The task sequences trainlab ships, registered as workloads (``trainlab run workload=split_mnist1d``).

- ``split_mnist1d``: MNIST-1D's ten classes cut into ``tasks`` groups of ``10 / tasks`` classes (class- or
  task-incremental), the classic split benchmark (Zenke et al. 2017's split MNIST) on MNIST-1D.

Every sequence is generated offline from its workload's own generator, deterministic in its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainlab.config import ConfigError, option, seed_option
from trainlab.continual.sequence import Task, TaskSequence
from trainlab.workloads.base import Dataset, DataSpec, InputKind
from trainlab.workloads.mnist1d import Mnist1dOptions, Mnist1dWorkload
from trainlab.workloads.registry import register


@dataclass
class SplitMnist1dOptions:
    scenario: Literal["class", "task"] = option("class", help="class: one head over all classes; task: the task is "
                                                              "known, logits restricted to its classes")
    tasks: int = option(5, ge=2, le=10, help="number of tasks; must divide the 10 classes (2, 5 or 10)")
    steps_per_task: int = option(300, ge=1, le=10_000_000, help="optimizer steps on each task")
    class_order_seed: int = seed_option(0, help="0: classes in order 0,1 | 2,3 | ...; else a permutation of the "
                                                "classes drawn from this seed")
    num_samples: int = option(5000, ge=10, le=1_000_000, help="MNIST-1D examples generated in all")
    seed: int = seed_option(42, help="seed of the MNIST-1D generator (42 reproduces the published data)")
    cache: bool = option(True, help="store generated arrays as .npz under $TRAINLAB_CACHE or ~/.cache/trainlab")

    def validate(self) -> None:
        if 10 % self.tasks:
            raise ConfigError("tasks", f"must divide the 10 classes (2, 5 or 10), got {self.tasks}")


@register("split_mnist1d", options=SplitMnist1dOptions, paper="Zenke et al. 2017 (split MNIST); Greydanus & Kobak "
                                                              "2024 (MNIST-1D)")
class SplitMnist1d(TaskSequence):
    """MNIST-1D's classes in groups, one group per task (class- or task-incremental)."""

    default_eval_every = 50
    default_batch_size = 32
    default_model = ("mlp", {"depth": 2, "width": 256})
    input_kinds = ("vector", "signal")

    options: SplitMnist1dOptions

    def __init__(self, options: SplitMnist1dOptions) -> None:
        options.validate()
        super().__init__(options)
        self.source = Mnist1dWorkload(Mnist1dOptions(num_samples=options.num_samples, seed=options.seed,
                                                     cache=options.cache))

    def spec(self, kind: InputKind) -> DataSpec:
        return self.source.spec(kind)

    def class_order(self) -> torch.Tensor:
        if self.options.class_order_seed == 0:
            return torch.arange(10)
        return torch.randperm(10, generator=torch.Generator().manual_seed(self.options.class_order_seed))

    def build(self, kind: InputKind) -> tuple[Dataset, list[Task]]:
        data = self.source.data(kind)
        per = 10 // self.options.tasks
        order = self.class_order()
        tasks = []
        for i in range(self.options.tasks):
            classes = order[i * per:(i + 1) * per].sort().values
            tasks.append(Task(name=f"classes {','.join(str(c) for c in classes.tolist())}",
                              train=torch.nonzero(torch.isin(data.y_train, classes)).flatten(),
                              val=torch.nonzero(torch.isin(data.y_val, classes)).flatten(),
                              classes=classes, steps=self.options.steps_per_task))
        return data, tasks
