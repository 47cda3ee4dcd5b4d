"""The masks of a run and what the trainer does with them: :class:`Pruner`.

The masks are the run's own: a dict of bool tensors keyed by parameter name (True = kept), not
``torch.nn.utils.prune``'s reparametrisation, which renames ``weight`` to ``weight_orig`` plus a forward
pre-hook -- that changes the state dict (checkpoints and ``init_from`` of other runs no longer fit), and the
optimizer would hold ``weight_orig``, updating pruned entries behind the mask.

Each optimizer step, the trainer

1. zeroes the gradients of pruned entries after the backward pass (:meth:`Pruner.mask_grads_`), so gradient
   clipping and the traced gradient norm measure the sub-network that is trained, and Adam's moments and SGD's
   momentum of a pruned entry receive nothing new;
2. after the optimizer's step, recomputes the masks if the schedule prunes at the new step count, then zeroes
   every pruned weight (:meth:`Pruner.after_step`). This alone guarantees that pruned weights are exactly 0 after
   every step whatever the optimizer does: decoupled weight decay, momentum accumulated before the entry was
   pruned, or an optimizer whose update is dense (Muon) cannot revive them.

Masks change only at the schedule's pruning steps; the counts reported (``sparsity`` in metrics rows, per-layer
counts in summary.json) are kept on the host from those steps, so reporting costs no device sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainlab.prune.layers import PrunableLayer
from trainlab.prune.masks import Scope, ipr_unit_masks, magnitude_masks, unit_masks
from trainlab.prune.schedule import is_pruning_step, target_sparsity


@dataclass
class Schedule:
    """Zhu & Gupta's schedule of one run (:mod:`trainlab.prune.schedule`); ``initial`` is s_i."""

    final: float
    start: int
    end: int
    every: int
    initial: float = 0.0

    def due(self, step: int) -> bool:
        return is_pruning_step(step, self.start, self.end, self.every)

    def target(self, step: int) -> float:
        return target_sparsity(step, self.initial, self.final, self.start, self.end)


@dataclass
class Pruner:
    """The masks of a run's prunable layers and the schedule that shrinks them.

    ``method``: ``magnitude``, ``neurons`` or ``ipr`` prune on ``schedule``; ``none`` keeps the masks fixed (a run
    with ``prune.from_run`` and no method of its own). ``ipr`` ranks the units of the layers given (the setup gives
    the first hidden layer only) by the IPR of their weights over ``ipr_p`` residues per operand (two operands). ``masks`` holds one mask per masked parameter: every prunable
    weight, plus, for structured pruning, the parameters of each unit's bias and BatchNorm entries.
    """

    model: nn.Module
    layers: list[PrunableLayer]
    method: Literal["none", "magnitude", "neurons", "ipr"]
    schedule: Schedule | None
    scope: Scope = "layer"
    norm: Literal["l2", "l1"] = "l2"
    masks: dict[str, Tensor] = field(default_factory=dict)
    rewind_step: int | None = None  # the step whose weights this run keeps for rewinding (None: it keeps none)
    inherited_rewind: bytes | None = None  # the rewind file of a run rewound from (written into this run as is)
    ipr_p: int = 0  # ipr: the modulus, residues per operand block of the first layer's one-hot inputs
    params: dict[str, nn.Parameter] = field(init=False)
    counts: dict[str, tuple[int, int, int, int]] = field(init=False)  # weight -> (pruned, total, units pruned, units)

    def __post_init__(self) -> None:
        self.params = dict(self.model.named_parameters())
        if not self.masks:
            self.masks = {name: torch.ones_like(self.params[name], dtype=torch.bool) for name in self._masked_names()}
        self.recount()

    def _masked_names(self) -> list[str]:
        names = [layer.weight for layer in self.layers]
        if self.method in ("neurons", "ipr"):
            names += [c for layer in self.layers for c in layer.companions]
        return names

    # -- each step ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight (``masked_fill_``: an exact 0 even where the weight was not finite)."""
        for name, mask in self.masks.items():
            self.params[name].masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients of pruned entries (after backward, before clipping and the optimizer's step)."""
        for name, mask in self.masks.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.masked_fill_(~mask, 0.0)

    def after_step(self, step: int) -> None:
        """After the optimizer step that made ``step`` steps: prune if the schedule says so, then zero the pruned
        weights."""
        if self.schedule is not None and self.method != "none" and self.schedule.due(step):
            self.prune_to(self.schedule.target(step))
        self.apply_()

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        """Shrink the masks so that ``fraction`` of the prunable weights (magnitude) or units (neurons) is
        pruned, ranking by the current (masked) weights (ipr: by their IPR); already pruned entries stay pruned."""
        weights = {layer.weight: self.params[layer.weight] for layer in self.layers}
        if self.method == "magnitude":
            keep = {name: self.masks[name] for name in weights}
            self.masks.update(magnitude_masks(weights, fraction, self.scope, keep))
        elif self.method in ("neurons", "ipr"):
            if self.method == "neurons":
                units = unit_masks(weights, fraction, self.scope, self.norm, self.unit_keep())
            else:
                units = ipr_unit_masks(weights, fraction, self.ipr_p, 2, self.unit_keep())
            for layer in self.layers:
                kept = units[layer.weight]
                shape = (-1,) + (1,) * (self.masks[layer.weight].dim() - 1)
                self.masks[layer.weight] = self.masks[layer.weight] & kept.view(shape)
                for name in layer.companions:
                    self.masks[name] = self.masks[name] & kept
        self.recount()

    def unit_keep(self) -> dict[str, Tensor]:
        """Per prunable weight, which output units keep at least one weight."""
        return {layer.weight: self.masks[layer.weight].reshape(self.masks[layer.weight].shape[0], -1).any(dim=1)
                for layer in self.layers}

    # -- what is pruned -----------------------------------------------------------------------------------

    def recount(self) -> None:
        """Count the pruned weights and units per layer (after the masks changed; one device read each)."""
        counts = {}
        for layer, units in zip(self.layers, self.unit_keep().values()):
            mask = self.masks[layer.weight]
            kept, kept_units = int(mask.sum().item()), int(units.sum().item())
            counts[layer.weight] = (mask.numel() - kept, mask.numel(), units.numel() - kept_units, units.numel())
        self.counts = counts

    def sparsity(self) -> float:
        """The fraction of the prunable weights that the masks prune (the ``sparsity`` of metrics rows)."""
        pruned, total = (sum(c[i] for c in self.counts.values()) for i in (0, 1))
        return pruned / total if total else 0.0

    def unit_sparsity(self) -> float:
        """The fraction of the prunable layers' units whose weights are all pruned."""
        pruned, total = (sum(c[i] for c in self.counts.values()) for i in (2, 3))
        return pruned / total if total else 0.0

    def fraction(self) -> float:
        """The quantity the schedule steers: :meth:`unit_sparsity` for ``neurons`` and ``ipr``, else
        :meth:`sparsity`."""
        return self.unit_sparsity() if self.method in ("neurons", "ipr") else self.sparsity()

    def summary(self) -> dict[str, Any]:
        """summary.json's ``prune`` entry: the final fractions and each layer's counts."""
        pruned, total = (sum(c[i] for c in self.counts.values()) for i in (0, 1))
        return {"method": self.method, "sparsity": self.sparsity(), "unit_sparsity": self.unit_sparsity(),
                "pruned": pruned, "prunable": total,
                "layers": {name: {"pruned": p, "total": n, "sparsity": p / n if n else 0.0, "units_pruned": up,
                                  "units": un}
                           for name, (p, n, up, un) in self.counts.items()}}

    # -- checkpoints and rewinding --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: the masks and the schedule's s_i (all else comes from the config)."""
        return {"masks": {name: mask.detach().cpu().clone() for name, mask in self.masks.items()},
                "initial": self.schedule.initial if self.schedule is not None else 0.0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's masks; a ValueError names the first that does not fit this run's parameters."""
        self.masks = self.checked_masks(state.get("masks"), "the checkpoint's")
        if self.schedule is not None:
            self.schedule.initial = float(state.get("initial", 0.0))
        self.recount()
        self.apply_()

    def checked_masks(self, masks: Any, whose: str, *, fill: bool = False) -> dict[str, Tensor]:
        """``masks`` on this run's device, if they are bool tensors of this model's parameters, in shape; else a
        ValueError naming the first misfit. A parameter this run masks and ``masks`` lack is an error, or, with
        ``fill`` (another run's masks: a magnitude run's have no bias masks), kept whole."""
        if not isinstance(masks, dict):
            raise ValueError(f"{whose} masks are {type(masks).__name__}, not a mapping")
        missing = [name for name in self._masked_names() if name not in masks]
        if missing and not fill:
            raise ValueError(f"{whose} masks lack {missing[0]} (prunable here)")
        out = {name: torch.ones_like(self.params[name], dtype=torch.bool) for name in missing}
        for name, mask in masks.items():
            param = self.params.get(name)
            if param is None:
                raise ValueError(f"{whose} masks name {name}, which this model does not have")
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise ValueError(f"{whose} mask of {name} is not a bool tensor")
            if mask.shape != param.shape:
                raise ValueError(f"{whose} mask of {name} has shape {list(mask.shape)}, the weight here "
                                 f"{list(param.shape)}")
            out[name] = mask.to(param.device)
        return out

    def keep_rewind_point(self, step: int, run_dir: Path) -> None:
        """Before optimizer step ``step + 1``, on the main process: write ``RUN/prune/rewind.safetensors`` -- the
        inherited one, once, in a run rewound from another; else this run's weights when ``step`` is its
        ``rewind_step``."""
        from trainlab.prune.source import write_rewind, write_rewind_bytes

        if self.inherited_rewind is not None:
            write_rewind_bytes(run_dir, self.inherited_rewind)
            self.inherited_rewind = None
        elif self.rewind_step is not None and step == self.rewind_step:
            write_rewind(run_dir, self.model.state_dict(), step)
