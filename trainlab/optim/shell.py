"""What every thin ``torch.optim.Optimizer`` shell in trainlab does around its pure update function."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor


def evaluate_closure(closure: Callable[[], Any] | None) -> Any:
    """``torch.optim`` semantics: re-evaluate the loss with gradients enabled when a closure is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def hyperparameter(value: Any) -> Any:
    """A group's hyperparameter (``lr``) as an update reads it: a tensor's Python number in eager mode, the
    tensor itself while ``torch.compile`` traces the step.

    ``torch.optim``'s own rule (``torch.optim.optimizer._get_value``): eagerly, a 0-dim tensor lr gives the same
    numbers as the float it holds; under compilation it stays a graph input, so a schedule that writes
    ``group["lr"].fill_(new)`` does not recompile the step.
    """
    if isinstance(value, Tensor) and not torch.compiler.is_compiling():
        return value.item()
    return value


def groups_with_grads(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict, list[Tensor], list[Tensor]]]:
    """(group, params, grads) for each param group, skipping parameters without a gradient.

    Sparse gradients are refused with the optimizer's class name (every trainlab algorithm is dense).
    """
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        yield group, params, grads


def use_foreach(setting: bool | None, params: list[Tensor]) -> bool:
    """Whether to run the ``torch._foreach_*`` path: as asked, or by default only on CUDA.

    On CPU the foreach kernels are per-tensor loops that stream every tensor of the list through memory once
    per op; the per-tensor path keeps each tensor in cache across its ops and measured 1.1-1.9x faster for
    Lion, LAMB and diffGrad (benchmarks/RESULTS.md). On CUDA foreach saves kernel launches.
    """
    if setting is not None:
        return bool(setting)
    return bool(params) and params[0].is_cuda


def stepped_state(optimizer: torch.optim.Optimizer, params: list[Tensor],
                  buffers: Sequence[str]) -> tuple[list[list[Tensor]], list[int]]:
    """Adam-style per-parameter state: on first use a ``step`` counter and zero ``buffers``; every call counts
    one step. Returns the buffers key by key (one list per key, in ``params`` order) and the step numbers."""
    columns: list[list[Tensor]] = [[] for _ in buffers]
    steps = []
    for p in params:
        state = optimizer.state[p]
        if not state:
            state["step"] = 0
            for key in buffers:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] = int(state["step"]) + 1
        for column, key in zip(columns, buffers):
            column.append(state[key])
        steps.append(state["step"])
    return columns, steps
