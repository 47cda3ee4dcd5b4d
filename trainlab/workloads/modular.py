"""``modular``: binary operations modulo ``p``, the grokking task.

Power, Burda, Edwards, Babuschkin & Misra (2022), "Grokking: Generalization beyond overfitting on small
algorithmic datasets" (arXiv:2201.02177). Every pair ``(a, b)`` with ``a, b`` in ``0..p-1`` (``b != 0`` for
``div``) is labelled ``a ∘ b mod p``; the pairs are shuffled with ``seed`` and the first ``train_frac`` of
them form the training set, the rest the validation set. A fraction ``corrupt_frac`` of the *training*
labels can be replaced by a uniformly random wrong label (label noise; validation labels stay clean).

Operations: ``add`` a+b, ``sub`` a-b, ``mul`` a·b, ``div`` a·b^(p-2) (= a/b, needs a prime p), ``x2_xy``
a²+ab, ``x2_xy_y2`` a²+ab+b², all mod p.

Input kinds:

- ``vector``: the concatenated one-hot codes of ``a`` and ``b``, shape ``(2p,)``, float32.
- ``tokens``: the sequence ``[a, b, =]`` with ``=`` the token ``p``: vocabulary ``p + 1``, length 3, int64.

Targets: int64 classes ``0..p-1``. Defaults (the grokking recipe): ``p=97``, ``op=add``, ``train_frac=0.4``,
full-batch training for 3000 steps with an MLP (depth 2, width 128, relu), metric accuracy, threshold 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trainlab.config import ConfigError, option, seed_option
from trainlab.workloads.base import Dataset, DataSpec, InputKind, Workload
from trainlab.workloads.registry import register

Op = Literal["add", "sub", "mul", "div", "x2_xy", "x2_xy_y2"]
OPS: tuple[str, ...] = ("add", "sub", "mul", "div", "x2_xy", "x2_xy_y2")


def is_prime(n: int) -> bool:
    """Trial division; ``n`` is a modulus, so small enough."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@dataclass
class ModularOptions:
    p: int = option(97, help="modulus (number of classes); div needs a prime", ge=2)
    op: Op = option("add", help="operation: add, sub, mul, div (a*b^(p-2)), x2_xy (a²+ab), x2_xy_y2 (a²+ab+b²)")
    train_frac: float = option(0.4, help="fraction of all pairs used for training; the rest is validation", gt=0, lt=1)
    corrupt_frac: float = option(
        0.0, help="fraction of training labels replaced by a uniformly random wrong label", ge=0, le=1
    )
    seed: int = seed_option(help="seed of the shuffle (train/validation split) and of the label corruption")

    def validate(self) -> None:
        if self.op == "div" and not is_prime(self.p):
            raise ConfigError("p", f"op=div needs a prime modulus (b^(p-2) is the inverse only then), got p={self.p}")


def operation(op: str, a: Tensor, b: Tensor, p: int) -> Tensor:
    """``a ∘ b mod p`` elementwise for int64 tensors ``a, b`` in ``0..p-1``."""
    if op == "add":
        out = a + b
    elif op == "sub":
        out = a - b
    elif op == "mul":
        out = a * b
    elif op == "div":
        inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)], dtype=torch.int64)
        out = a * inverse[b]
    elif op == "x2_xy":
        out = a * a + a * b
    elif op == "x2_xy_y2":
        out = a * a + a * b + b * b
    else:
        raise ValueError(f"unknown modular op {op!r}; allowed: {', '.join(OPS)}")
    return torch.remainder(out, p)


@register("modular", options=ModularOptions, paper="Power et al. 2022, arXiv:2201.02177")
class ModularWorkload(Workload):
    """Binary operations mod p (grokking; Power et al. 2022)."""

    metric = "acc"
    higher_is_better = True
    threshold = 0.99
    default_steps = 3000
    default_eval_every = 50
    default_batch_size = 0
    default_model = ("mlp", {"depth": 2, "width": 128, "activation": "relu"})
    # Power et al. (2022) and Nanda et al. (2023) grok with AdamW, betas (0.9, 0.98), weight decay 1; lr 3e-3
    # (rather than their 1e-3) brings generalisation within the 3000-step budget of an MLP on a laptop CPU.
    recipe = {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 1.0, "betas": (0.9, 0.98)}}
    recipe_source = "Power et al. 2022, lr raised to 3e-3"
    input_kinds = ("vector", "tokens")

    options: ModularOptions

    def __init__(self, options: ModularOptions) -> None:
        super().__init__(options)
        options.validate()
        self._pairs: dict[str, Tensor] | None = None
        self._cache: dict[str, Dataset] = {}

    # -------------------------------------------------------------------------------------------------
    def pairs(self) -> dict[str, Tensor]:
        """The split before encoding: ``a_train, b_train, y_train`` (possibly corrupted), ``y_train_clean``,
        ``corrupted`` (bool mask over training examples), ``a_val, b_val, y_val``; all CPU tensors."""
        if self._pairs is None:
            o = self.options
            p = o.p
            lo = 1 if o.op == "div" else 0
            a = torch.arange(p, dtype=torch.int64).repeat_interleave(p - lo)
            b = torch.arange(lo, p, dtype=torch.int64).repeat(p)
            y = operation(o.op, a, b, p)
            n = len(a)
            gen = torch.Generator().manual_seed(o.seed)
            perm = torch.randperm(n, generator=gen)
            a, b, y = a[perm], b[perm], y[perm]
            n_train = min(max(int(o.train_frac * n), 1), n - 1)
            y_train = y[:n_train].clone()
            n_corrupt = int(round(o.corrupt_frac * n_train))
            corrupted = torch.zeros(n_train, dtype=torch.bool)
            if n_corrupt:
                idx = torch.randperm(n_train, generator=gen)[:n_corrupt]
                shift = torch.randint(1, p, (n_corrupt,), generator=gen)  # uniform over the p-1 wrong labels
                y_train[idx] = torch.remainder(y_train[idx] + shift, p)
                corrupted[idx] = True
            self._pairs = {
                "a_train": a[:n_train], "b_train": b[:n_train], "y_train": y_train, "y_train_clean": y[:n_train],
                "corrupted": corrupted, "a_val": a[n_train:], "b_val": b[n_train:], "y_val": y[n_train:],
            }  # fmt: skip
        return self._pairs

    def encode(self, a: Tensor, b: Tensor, kind: InputKind) -> Tensor:
        """Inputs for pairs ``(a, b)`` in the given input kind."""
        p = self.options.p
        if kind == "vector":
            x = torch.zeros(len(a), 2 * p, dtype=torch.float32)
            rows = torch.arange(len(a))
            x[rows, a] = 1.0
            x[rows, p + b] = 1.0
            return x
        return torch.stack([a, b, torch.full_like(a, p)], dim=1)

    def spec(self, kind: InputKind) -> DataSpec:
        kind = self.check_kind(kind)
        p = self.options.p
        if kind == "vector":
            return DataSpec("vector", (2 * p,), p, "classification")
        return DataSpec("tokens", (3,), p, "classification", vocab_size=p + 1)

    def data(self, kind: InputKind) -> Dataset:
        kind = self.check_kind(kind)
        if kind not in self._cache:
            s = self.pairs()
            self._cache[kind] = Dataset(
                self.encode(s["a_train"], s["b_train"], kind), s["y_train"],
                self.encode(s["a_val"], s["b_val"], kind), s["y_val"],
            )  # fmt: skip
        return self._cache[kind]
