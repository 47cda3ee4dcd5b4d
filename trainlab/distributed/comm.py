"""Byte accounting for every distributed strategy.

What is counted: the **payload** this process hands to collectives -- the input of an all-reduce, this
process's own contribution to an all-gather, the shard a reduce-scatter starts from -- in bytes. That is the
quantity the papers compare (DiLoCo's H-fold reduction, DGC's compression ratio, Streaming DiLoCo's bits
exchanged). It is not what crosses the wire: a ring all-reduce of ``B`` payload bytes over ``N`` processes
sends ``2 (N - 1) / N * B`` bytes per process, an all-gather ``(N - 1) / N`` of the gathered size; gloo's
reduce-scatter runs as a full all-reduce. :func:`ring_allreduce_wire_bytes` converts where a reader wants it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from torch import Tensor


def tensor_bytes(tensors: Tensor | Iterable[Tensor]) -> int:
    """Bytes held by a tensor (or the sum over several): ``numel * element_size``."""
    if isinstance(tensors, Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(t.numel() * t.element_size() for t in tensors)


def ring_allreduce_wire_bytes(payload: int, world_size: int) -> float:
    """Bytes one process sends in a ring all-reduce of ``payload`` bytes: ``2 (N - 1) / N * payload``."""
    return 0.0 if world_size <= 1 else 2.0 * (world_size - 1) / world_size * payload


class CommMeter:
    """Counts the payload bytes this process gives to collectives, in total, per kind and per training step.

    ``add(n, kind)`` after (or when issuing) a collective; ``end_step()`` once per optimizer step returns the
    bytes since the previous call. ``state_dict``/``load_state_dict`` keep the totals across a resume.
    """

    def __init__(self) -> None:
        self.total = 0
        self.by_kind: dict[str, int] = defaultdict(int)
        self._since_step = 0
        self.last_step = 0

    def add(self, nbytes: int, kind: str = "other") -> None:
        nbytes = int(nbytes)
        self.total += nbytes
        self.by_kind[kind] += nbytes
        self._since_step += nbytes

    def end_step(self) -> int:
        self.last_step, self._since_step = self._since_step, 0
        return self.last_step

    def summary(self) -> dict[str, object]:
        return {"bytes_total": self.total, "bytes_by_kind": dict(self.by_kind)}

    def state_dict(self) -> dict[str, object]:
        return {"total": self.total, "by_kind": dict(self.by_kind)}

    def load_state_dict(self, state: dict) -> None:
        self.total = int(state.get("total", 0))
        self.by_kind = defaultdict(int, {str(k): int(v) for k, v in dict(state.get("by_kind", {})).items()})
        self._since_step = 0
