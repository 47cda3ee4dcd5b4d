"""Coordinate-wise gradient clipping (Pan & Li 2023, "Toward Understanding Why Adam Converges Faster Than SGD for
Transformers"), a wrapper.

Before the base optimizer's step, every gradient coordinate is clamped::

    g_i <- clamp(g_i, -threshold, threshold)
    base optimizer step (any registry optimizer; default ``sgd``)

The paper argues that Adam's advantage over SGD on transformers comes from lowering the *directional
sharpness* of the update, which is dominated by a few coordinates with outsized values; clipping those
coordinates gives SGD (and other optimizers) much of the same benefit. ``threshold`` is in gradient units
(default 1.0). Units and other defaults are the base optimizer's.

What is clipped: the gradient the base sees. For plain SGD that is the same as clipping the update (with the
threshold scaled by lr); for a base with momentum or adaptive scaling it is not -- clipping the base's update
instead would be a different wrapper. (Which of the two the paper's experiments use for Adam was not checked
against the paper's text here.) Only a fixed threshold is offered, not one chosen per step from |g|.

The gradients are modified in place, so ``p.grad`` after ``step()`` holds the clipped gradient. Built through
:class:`~trainlab.optim.wrappers.GradientTransformWrapper`: every base option is kept, and ``state_dict`` is
the base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import use_foreach
from trainlab.optim.wrappers import GradientTransformWrapper


def clip_coordinates_reference(grads: list[Tensor], threshold: float) -> None:
    """Clamp every coordinate of every gradient to ``[-threshold, threshold]`` in place."""
    for g in grads:
        g.clamp_(-threshold, threshold)


def clip_coordinates_foreach(grads: list[Tensor], threshold: float) -> None:
    """The same clamp as :func:`clip_coordinates_reference` with ``torch._foreach_*`` ops."""
    torch._foreach_clamp_min_(grads, -threshold)
    torch._foreach_clamp_max_(grads, threshold)


class CoordClip(GradientTransformWrapper):
    """Coordinate-wise clipping (Pan & Li 2023): clamp each gradient coordinate, then step the base optimizer.

    Args:
        params: tensors or param-group dicts.
        base: registry name or class of the base optimizer (default ``"sgd"``).
        threshold: clamp each gradient coordinate to ``[-threshold, threshold]`` (default 1.0).
        foreach: ``torch._foreach_*`` form of the clamp (True), :func:`clip_coordinates_reference` (False), or by
                device (None, default: foreach on CUDA only).
        **base_options: the base optimizer's options (``lr``, ``momentum``, ...).
    """

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer] = "sgd", threshold: float = 1.0, *,
                 foreach: bool | None = None, **base_options: Any) -> None:
        if not threshold > 0.0:
            raise ValueError(f"Invalid threshold: {threshold} (must be > 0)")
        self.threshold = float(threshold)
        super().__init__(params, base, foreach=foreach, **base_options)

    def transform_(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        (clip_coordinates_foreach if use_foreach(self.foreach, grads) else clip_coordinates_reference)(grads, self.threshold)


@dataclass(frozen=True)
class CoordClipOptions:
    base: str = option("sgd", help="registry name of the base optimizer stepped on the clipped gradients "
                                   "(its options follow, e.g. optimizer.lr)")
    threshold: float = option(1.0, gt=0.0, help="clamp each gradient coordinate to [-threshold, threshold]")


OPTIMIZERS.add("coordclip", CoordClip, options=CoordClipOptions,
               summary="Clamp each gradient coordinate, then any base optimizer", source="trainlab", own=True,
               wrapper=True, tensor_lr=True,
               paper="Pan & Li 2023, Toward Understanding Why Adam Converges Faster Than SGD for Transformers")
