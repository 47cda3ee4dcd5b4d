"""``sparse_parity``: the (n, k)-sparse parity problem.

Barak, Edelman, Goel, Kakade, Malach & Zhang (2022), "Hidden progress in deep learning: SGD learns parities
near the computational limit" (NeurIPS 2022, arXiv:2207.08799). Inputs are uniform random ``±1`` vectors of
length ``n`` (float32); a subset ``S`` of ``k`` coordinates, chosen with ``seed``, is relevant and the label is
their parity: ``1`` when ``∏_{i∈S} x_i = -1`` (an odd number of ``-1`` among them), else ``0``.

Defaults: ``n=30``, ``k=3``, 2000 training and 1000 validation examples, batch 64, 3000 steps, an MLP with one
hidden layer of width 256; metric accuracy, threshold 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainlab.config import ConfigError, option, seed_option
from trainlab.workloads.base import Dataset, DataSpec, InputKind, Workload
from trainlab.workloads.registry import register


@dataclass
class SparseParityOptions:
    n: int = option(30, help="number of input bits", ge=1)
    k: int = option(3, help="number of relevant bits (the parity's degree), at most n", ge=1)
    n_train: int = option(2000, help="training examples", ge=1)
    n_val: int = option(1000, help="validation examples", ge=1)
    seed: int = seed_option(help="seed of the relevant subset and of the inputs")

    def validate(self) -> None:
        if self.k > self.n:
            raise ConfigError("k", f"must be <= n={self.n} (relevant bits among n), got {self.k}")


def parity(x: Tensor, relevant: Tensor) -> Tensor:
    """0/1 parity of the ``±1`` inputs ``x`` over the ``relevant`` coordinates (1 = product is -1)."""
    return (x[:, relevant] < 0).sum(1).remainder(2).to(torch.int64)


@register("sparse_parity", options=SparseParityOptions, paper="Barak et al. 2022, arXiv:2207.08799")
class SparseParityWorkload(Workload):
    """(n, k)-sparse parity of ±1 bits (Barak et al. 2022)."""

    metric = "acc"
    higher_is_better = True
    threshold = 0.99
    default_steps = 3000
    default_eval_every = 100
    default_batch_size = 64
    default_model = ("mlp", {"depth": 1, "width": 256})
    input_kinds = ("vector",)

    options: SparseParityOptions

    def __init__(self, options: SparseParityOptions) -> None:
        super().__init__(options)
        options.validate()
        self._data: Dataset | None = None
        self._relevant: Tensor | None = None

    @property
    def relevant(self) -> Tensor:
        """The sorted indices of the ``k`` relevant bits."""
        if self._relevant is None:
            self._generate()
        assert self._relevant is not None
        return self._relevant

    def _generate(self) -> None:
        o = self.options
        gen = torch.Generator().manual_seed(o.seed)
        relevant = torch.randperm(o.n, generator=gen)[: o.k].sort().values

        def draw(m: int) -> Tensor:
            return torch.randint(0, 2, (m, o.n), generator=gen).to(torch.float32).mul_(2).sub_(1)

        x_train, x_val = draw(o.n_train), draw(o.n_val)
        self._relevant = relevant
        self._data = Dataset(x_train, parity(x_train, relevant), x_val, parity(x_val, relevant))

    def spec(self, kind: InputKind) -> DataSpec:
        self.check_kind(kind)
        return DataSpec("vector", (self.options.n,), 2, "classification")

    def data(self, kind: InputKind) -> Dataset:
        self.check_kind(kind)
        if self._data is None:
            self._generate()
        assert self._data is not None
        return self._data
