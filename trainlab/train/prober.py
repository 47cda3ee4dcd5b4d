"""Runs the configured probes (``probes=...``) at their cadence, with the timer paused, on the main process.

Cadence: at every evaluation (``probes.every=0``, the default) or every N steps, plus ``probes.log_spaced``
points per decade of steps (1, 1.3, 1.8, 2.4, ... with 8 per decade) -- the early dynamics of grokking and
of the edge of stability are fast, the late ones slow. The last step is always probed.

Each probe reads the same fixed ``probes.examples`` training and validation examples every time (chosen once
from ``probes.seed``). Its values land in ``metrics.jsonl`` as ``<probe>/<key>`` and its measured cost as
``probe_seconds/<probe>``; a probe that does not apply is dropped with one message and recorded in
``probes_skipped``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext


def log_spaced_steps(total: int, per_decade: int) -> set[int]:
    """Integer steps 10^(k/per_decade) up to ``total`` (deduplicated; 0 excluded)."""
    if per_decade <= 0 or total < 1:
        return set()
    count = int(math.floor(math.log10(total) * per_decade)) + 1
    return {min(total, int(round(10 ** (k / per_decade)))) for k in range(count)}


class Prober:
    """The probes of one run. ``due(step)`` says whether to probe before the step; ``run`` measures."""

    def __init__(self, options: Any, total_steps: int, eval_every: int, *, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 data: Any, message: Callable[[str], None] = print, train_rows: Tensor | None = None) -> None:
        self.options, self.total, self.eval_every = options, total_steps, eval_every
        self.names = list(options.names)
        self.loss_fn, self.message = loss_fn, message
        self.train_rows = train_rows  # a data diet's rows of the workload's training set (None: all of them)
        self.extra_steps = log_spaced_steps(total_steps, options.log_spaced)
        self.skipped: dict[str, str] = {}
        self.cache: dict[str, dict[str, Any]] = {name: {} for name in self.names}
        self.initial: dict[str, Tensor] = {}
        self.before: list[Tensor] | None = None
        self.last_update: list[Tensor] | None = None
        self.needs_update = any(PROBES.get(n).meta.get("needs_update") for n in self.names)
        self.needs_initial = any(PROBES.get(n).meta.get("needs_initial") for n in self.names)
        if self.names:
            gen = torch.Generator().manual_seed(options.seed)
            train = torch.randperm(data.n_train, generator=gen)[: options.examples].to(data.x_train.device)
            val = torch.randperm(data.n_val, generator=gen)[: options.examples].to(data.x_val.device)
            self.x_train, self.y_train = data.x_train[train], data.y_train[train]
            self.x_val, self.y_val = data.x_val[val], data.y_val[val]
            self.data = data

    @property
    def active(self) -> bool:
        return bool(self.names)

    def due(self, step: int) -> bool:
        if not self.names:
            return False
        every = self.options.every or self.eval_every
        return step % every == 0 or step == self.total or step in self.extra_steps

    def snapshot_initial(self, model: torch.nn.Module) -> None:
        if self.needs_initial and not self.initial:
            self.initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    def before_step(self, model: torch.nn.Module, step: int) -> None:
        """Keep the parameters before a step whose result will be probed (for ``update_sharpness``)."""
        if self.needs_update and self.due(step + 1):
            self.before = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def run(self, model: torch.nn.Module, step: int, lr: float, run_dir: Path | None) -> dict[str, Any]:
        """Every live probe's values (``<probe>/<key>``) and seconds (``probe_seconds/<probe>``)."""
        if self.before is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            self.last_update = [p.detach() - b for p, b in zip(params, self.before)]
            self.before = None
        row: dict[str, Any] = {}
        for name in list(self.names):
            ctx = ProbeContext(model=model, loss_fn=self.loss_fn, x_train=self.x_train, y_train=self.y_train,
                               x_val=self.x_val, y_val=self.y_val, step=step, lr=lr, options=self.options,
                               initial=self.initial, last_update=self.last_update, run_dir=run_dir,
                               x_train_all=self.data.x_train, y_train_all=self.data.y_train, cache=self.cache[name],
                               train_rows=self.train_rows)
            started = time.perf_counter()
            try:
                values = PROBES.get(name).factory(ctx)
            except NotApplicable as why:
                if name == "update_sharpness" and self.last_update is None:
                    continue  # no step taken yet (step 0, or just resumed): not a reason to drop it
                self.names.remove(name)
                self.skipped[name] = str(why)
                self.message(f"  probe {name} skipped: {why}")
                continue
            row.update({f"{name}/{k}": _plain(v) for k, v in values.items()})
            row[f"probe_seconds/{name}"] = round(time.perf_counter() - started, 6)
        self.last_update = None
        return row


def _plain(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # strict JSON: NaN/inf become null
