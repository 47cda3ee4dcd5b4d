"""``replay``: experience replay from a reservoir buffer (Chaudhry et al. 2019, "On Tiny Episodic Memories in
Continual Learning", arXiv:1902.10486).

Rule, per optimizer step ``s``:

- the batch is the current task's ``batch_size`` rows plus ``continual.replay_batch`` (default 32) rows drawn
  uniformly without replacement from the buffer (all of it while it holds fewer; none while it is empty), so
  the loss is the mean over both, as ER's joint batch;
- after the step, the current task's rows of that batch go through reservoir sampling (Vitter 1985, Algorithm
  R) into a buffer of ``continual.memory`` (default 200) rows: the ``n``-th distinct row seen is appended while
  the buffer is not full, else it replaces slot ``j ~ U{0, ..., n-1}`` when ``j < memory``. Every distinct row
  seen so far is then in the buffer with probability ``memory / n``, whatever task it came from, so the buffer
  is a uniform sample of the stream (current task included, as in ER).

Units: rows of the sequence's union training split; the buffer holds indices, not copies of the inputs.

Deviation: a row counts once, the first time it is trained on. Chaudhry et al. see each example once (one
epoch per task); trainlab's tasks train for a number of steps that may be several epochs, and offering a row
again at each epoch would let the buffer hold duplicates. Both draws (the replayed rows, the reservoir's slots)
come from generators seeded by (seed, step), so the batches are a pure function of the seed and the buffer;
the buffer (rows, rows seen, which rows were seen) is checkpointed, and a resumed run draws the same rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.continual.methods.base import METHODS, Method, MethodContext, seeded
from trainlab.continual.sequence import TaskSampler


class Reservoir:
    """A uniform sample of at most ``capacity`` distinct rows of a stream of row indices in ``[0, n_rows)``."""

    def __init__(self, capacity: int, n_rows: int) -> None:
        self.capacity = capacity
        self.rows = torch.zeros(0, dtype=torch.long)  # the slots, in slot order
        self.seen = 0  # distinct rows offered so far (Algorithm R's n)
        self.offered = torch.zeros(n_rows, dtype=torch.bool)  # which rows were offered (each counts once)

    def __len__(self) -> int:
        return len(self.rows)

    def offer(self, rows: Tensor, generator: torch.Generator) -> None:
        """Offer ``rows`` (distinct, in stream order); those offered before are skipped."""
        rows = rows.cpu()
        new = rows[~self.offered[rows]]
        if len(new) == 0:
            return
        self.offered[new] = True
        # n_i is the number of rows seen with the i-th new one; j_i ~ U{0, ..., n_i - 1}. One draw per row, full
        # buffer or not, so the stream of draws does not depend on when the buffer filled.
        seen = self.seen + 1 + torch.arange(len(new), dtype=torch.float64)
        slots = (torch.rand(len(new), generator=generator, dtype=torch.float64) * seen).long().tolist()
        kept = self.rows.tolist()
        for row, j in zip(new.tolist(), slots):  # in order: a later row may replace an earlier one of this batch
            if len(kept) < self.capacity:
                kept.append(row)
            elif j < self.capacity:
                kept[j] = row
        self.rows = torch.tensor(kept, dtype=torch.long)
        self.seen += len(new)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows.clone(), "seen": self.seen, "offered": self.offered.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"].to("cpu", torch.long)
        self.seen = int(state["seen"])
        self.offered = state["offered"].to("cpu", torch.bool)


@METHODS.register("replay", summary="experience replay: every batch adds continual.replay_batch rows of a "
                                    "reservoir buffer of continual.memory rows",
                  paper="Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning")
class Replay(Method):
    """Experience replay with a reservoir buffer (module docstring: the rule and its defaults)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        super().__init__(options, ctx)
        self.buffer = Reservoir(options.memory, ctx.data.n_train)
        self.sampler: TaskSampler | None = None

    def attach(self, sampler: TaskSampler) -> None:
        self.sampler = sampler
        sampler.memory = self.memory_rows

    def memory_rows(self, step: int) -> Tensor | None:
        """The buffer rows added to the batch of ``step`` (the sampler asks more than once per step: a pure
        function of the step and the buffer)."""
        if len(self.buffer) == 0:
            return None
        pick = torch.randperm(len(self.buffer), generator=seeded(self.ctx.seed, "replay", step))
        return self.buffer.rows[pick[:self.options.replay_batch]]

    def after_step(self, step: int, rows: Tensor, model: nn.Module) -> None:
        # The stream is the current task's rows of the global batch (the sampler's, on every process alike), not
        # ``rows``: those are this process's share and hold replayed rows.
        assert self.sampler is not None, "attach() was not called"
        self.buffer.offer(self.sampler.current(step), seeded(self.ctx.seed, "reservoir", step))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
