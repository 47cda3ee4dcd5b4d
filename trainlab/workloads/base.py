"""What a workload is: data, the shape of what a model must read and produce, a loss, a metric, a target.

A workload never knows which training algorithm trains it (AlgoPerf's separation). It produces its data
deterministically from its own options (including its ``seed``), entirely offline, as in-memory tensors.

Input kinds (``DataSpec.input_kind``) tell models what the tensors look like, without batch dimension:

- ``vector``: float features, shape ``(d,)``
- ``signal``: float 1-D signal, shape ``(channels, length)``
- ``image``:  float image, shape ``(channels, height, width)``
- ``tokens``: integer token ids, shape ``(length,)``

A workload may offer its data in several kinds (``modular`` as concatenated one-hots for an MLP or as token
pairs for a transformer); the trainer asks for the first kind the chosen model accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from trainlab.errors import DataError  # noqa: F401  (defined there; imported from here too)

InputKind = Literal["vector", "signal", "image", "tokens"]
Task = Literal["classification", "regression", "lm"]


@dataclass(frozen=True)
class DataSpec:
    """Everything a model factory may know about the data: shapes and the kind of prediction."""

    input_kind: InputKind
    input_shape: tuple[int, ...]
    n_outputs: int  # classes (classification), target dimension (regression), vocabulary (lm)
    task: Task
    vocab_size: int | None = None  # for token inputs


@dataclass
class Dataset:
    """In-memory train and validation tensors (CPU). ``x_*`` follow the spec; ``y_*`` are the targets."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_val) != len(self.y_val):
            raise ValueError("inputs and targets differ in length")

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_val(self) -> int:
        return len(self.x_val)


class Workload:
    """Base class. Subclasses set the class attributes and implement :meth:`spec` and :meth:`data`.

    Class attributes:
        metric: name of the evaluation metric (``acc`` or ``mse``); logged as ``train_<metric>``/``val_<metric>``.
        higher_is_better: direction of the metric.
        threshold: the default "solved" value of the metric (memorised / generalised events).
        default_steps, default_eval_every: step budget and evaluation period.
        default_batch_size: examples per step; 0 means full batch.
        default_model: (registry name, options) of the model used when the user names none.
        recipe: other components (``optimizer``, ``schedule``: a mapping with ``name`` and options) used when the
            user names none of that kind; naming one (even the same name) gives that component's own defaults.
        recipe_source: where the recipe comes from (a paper), printed with it.
        input_kinds: the input kinds this workload can provide, preferred first.
    """

    name: str = ""
    metric: str = "acc"
    higher_is_better: bool = True
    threshold: float = 0.99
    default_steps: int = 1000
    default_eval_every: int = 50
    default_batch_size: int = 0
    default_model: tuple[str, dict] = ("mlp", {})
    recipe: dict[str, dict[str, Any]] = {}
    recipe_source: str = ""
    input_kinds: tuple[InputKind, ...] = ("vector",)

    @classmethod
    def budget(cls, options: Any) -> int:
        """The step budget of a run of this workload with ``options`` when ``steps`` is left unset."""
        return cls.default_steps

    @classmethod
    def recipe_components(cls) -> dict[str, dict[str, Any]]:
        """The components this workload trains with when the user names none: its default model and recipe."""
        name, options = cls.default_model
        return {"model": {"name": name, **options}, **cls.recipe}

    def __init__(self, options: object) -> None:
        self.options = options

    # --- to implement -------------------------------------------------------------------------------
    def spec(self, kind: InputKind) -> DataSpec:
        raise NotImplementedError

    def data(self, kind: InputKind) -> Dataset:
        raise NotImplementedError

    # --- loss and metric: per-example values, the trainer reduces them ----------------------------------
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example (or per-token) losses, unreduced. Default: cross-entropy on class logits."""
        if output.dim() == 3:  # (batch, time, vocab) language modelling; flat rows are faster than transpose(1, 2)
            flat = F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1), reduction="none")
            return flat.view(target.shape)
        return F.cross_entropy(output.float(), target, reduction="none")

    def mean_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The mean of :meth:`loss` over every example (and token) of the batch.

        The default cross-entropy reduces inside its kernel: one op forward and one backward where the mean of
        the unreduced losses takes three (the trainer's step for one process uses this; RESULTS.md, "Trainer
        overhead"). A workload with its own :meth:`loss` gets that loss's plain mean.
        """
        if type(self).loss is not Workload.loss:
            return self.loss(output, target).mean()
        if output.dim() == 3:
            return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1))
        return F.cross_entropy(output.float(), target)

    def metric_values(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example (or per-token) metric values; their mean is the metric. Default: accuracy."""
        return (output.argmax(-1) == target).to(torch.float32)

    # --- helpers --------------------------------------------------------------------------------------
    def solved(self, value: float, threshold: float | None = None) -> bool:
        limit = self.threshold if threshold is None else threshold
        return value >= limit if self.higher_is_better else value <= limit

    def check_kind(self, kind: str) -> InputKind:
        if kind not in self.input_kinds:
            raise ValueError(
                f"workload {self.name!r} provides {', '.join(self.input_kinds)} inputs, not {kind!r}"
            )
        return kind  # narrowed to InputKind by the `in` test above


class RegressionWorkload(Workload):
    """Regression: targets are float vectors; loss ``0.5·||y - ŷ||²`` per example, metric mean squared error."""

    metric = "mse"
    higher_is_better = False

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (output.float() - target.float()).pow(2).sum(-1)

    def metric_values(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.float() - target.float()).pow(2).mean(-1)
