"""Grokfast, EMA filter (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients",
arXiv:2405.20233), a wrapper.

Before the base optimizer's step, each parameter's gradient ``g`` is low-pass filtered over the steps and the
slow part is added back, amplified::

    ema <- alpha * ema + (1 - alpha) * g        (ema <- g at the first step that has a gradient)
    g   <- g + lamb * ema
    base optimizer step (any registry optimizer; default ``adamw``)

The paper views the sequence of gradients of one parameter as a signal: its fast-varying part drives the quick
fit of the training set, its slow part the later generalisation; amplifying the slow part makes grokking
happen earlier (more than 50x earlier on the paper's algorithmic task). ``grokfast_alpha`` is the EMA's decay per
step (dimensionless, in [0, 1); default 0.98, a time constant of ~50 steps) and ``grokfast_lamb`` the
amplification (dimensionless, >= 0; default 2.0): both the paper's defaults for the EMA filter. The filtered
gradient is in gradient units; at steady state it is ~(1 + lamb) g for a constant g, so a base without
per-coordinate normalisation (SGD) sees a gradient up to 3x larger and may want a smaller lr. Units and
defaults of the step itself are the base optimizer's. (The names carry the ``grokfast_`` prefix, as in
pytorch-optimizer's ``GrokFastAdamW``, because ``alpha`` is already an option of several bases, RMSprop's
among them, and a wrapper's options sit beside its base's.)

Details as in ``pytorch_optimizer.optimizer.grokfast.gradfilter_ema`` (parity to the bit in
``tests/optim/test_grokfast.py``) and, up to rounding, the authors' ``gradfilter_ema`` (``ironjr/grokfast``,
``grokfast.py``): the EMA of a parameter starts as a copy of its first gradient (so the first step uses
``(1 + lamb) g``), is updated only at steps where the parameter has a gradient, is kept in the parameter's dtype,
and is updated before it is added. The update is written ``ema.lerp_(g, 1 - alpha)``, as pytorch-optimizer
does; the authors write ``ema * alpha + g * (1 - alpha)`` (the same number up to rounding: one rounding
instead of three) and also apply it at the first call, to ``ema = g`` (``g`` again, up to rounding). Their
dict of EMAs is built at the first call only, so a parameter whose first gradient comes later raises a
``KeyError`` there; here, as in pytorch-optimizer, its EMA starts then. The gradients are modified in place (as
in both references), so ``p.grad`` after ``step()`` holds the amplified gradient.

State: the EMA lives in the base optimizer's own per-parameter state, ``optimizer.state[p]["grokfast_ema"]``
(a tensor shaped like ``p``), rather than in the wrapper with an extra top-level ``state_dict`` entry as
``ogd`` and ``autolrs`` keep theirs. So ``state_dict``/``load_state_dict`` stay the base's, unchanged (tensors
and plain containers, loadable with ``torch.load(weights_only=True)``; torch casts the EMA to each parameter's
device and dtype on load), and the EMA goes wherever per-parameter state goes: ``dist.strategy=fsdp`` saves
through ``get_optimizer_state_dict``, which rebuilds the dict from ``state`` and ``param_groups`` alone (a
top-level entry is silently dropped there: checked with ``autolrs``'s), and ZeroRedundancyOptimizer likewise
consolidates only those two keys (``zero1`` refuses every wrapper today, for their ``train()``/``eval()``).
The one care this needs: many optimizers (``torch.optim``'s among them) initialise a parameter's state when
they find it empty, so the wrapper adds the EMA of a newly seen parameter only *after* the base's first step
on it. A base that left a parameter's state empty at its first step and initialised it on ``len(state) == 0``
later would break under this wrapper; none of the registry's does (checked once: each of the 120 plain
registry optimizers that take an MLP's parameters and have no ``grokfast_*`` option of their own gave the same
weights as ``gradfilter_ema`` + that optimizer, and an exact state round trip). A run resumed from a
checkpoint of the bare base (no ``grokfast_ema``) starts each EMA afresh from the next gradient.

For bfloat16/float16 parameters the EMA is in that dtype too (as in both references): with alpha = 0.98 the
update moves it by 2% of ``g - ema``, which a 16-bit mantissa rounds away when that is small. Training with
float32 parameters (and autocast) is not affected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.config import option
from trainlab.optim.registry import OPTIMIZERS
from trainlab.optim.shell import use_foreach
from trainlab.optim.wrappers import GradientTransformWrapper

#: The key of the EMA in the base optimizer's per-parameter state.
STATE_KEY = "grokfast_ema"


def amplify_slow_reference(grads: list[Tensor], emas: list[Tensor], fresh: list[bool], alpha: float,
                           lamb: float) -> None:
    """For each gradient: unless ``fresh`` (its EMA was just made a copy of it), ``ema <- lerp(ema, g, 1 - alpha)``;
    then ``g <- g + lamb * ema``. Both in place."""
    for g, ema, new in zip(grads, emas, fresh):
        if not new:
            ema.lerp_(g, 1.0 - alpha)
        g.add_(ema, alpha=lamb)


def amplify_slow_foreach(grads: list[Tensor], emas: list[Tensor], fresh: list[bool], alpha: float,
                         lamb: float) -> None:
    """The same update as :func:`amplify_slow_reference` with ``torch._foreach_*`` ops."""
    old = [i for i, new in enumerate(fresh) if not new]
    if old:
        torch._foreach_lerp_([emas[i] for i in old], [grads[i] for i in old], 1.0 - alpha)
    torch._foreach_add_(grads, emas, alpha=lamb)


class Grokfast(GradientTransformWrapper):
    """Grokfast-EMA (Lee et al. 2024, arXiv:2405.20233): amplify the slow (EMA) part of each gradient, then step
    the base optimizer.

    Per parameter, before the base's step: ``ema <- alpha * ema + (1 - alpha) * g`` (``ema`` starts as the first
    gradient), then ``g <- g + lamb * ema``, with ``g`` (``p.grad``) modified in place. The EMA is kept in the
    base's per-parameter state under ``"grokfast_ema"``, so ``state_dict()`` is the base's and a resumed run
    continues exactly.

    Args:
        params: tensors or param-group dicts.
        base: registry name or class of the base optimizer (default ``"adamw"``).
        grokfast_alpha: decay of the gradient EMA per step, dimensionless in [0, 1) (default 0.98, the paper's).
        grokfast_lamb: amplification of the EMA added to the gradient, dimensionless >= 0 (default 2.0, the
                paper's).
        foreach: ``torch._foreach_*`` form of the filter (True), :func:`amplify_slow_reference` (False), or by
                device (None, default: foreach on CUDA only).
        **base_options: the base optimizer's options (``lr``, ``betas``, ``weight_decay``, ...).
    """

    def __init__(self, params: Any, base: str | type[torch.optim.Optimizer] = "adamw", grokfast_alpha: float = 0.98,
                 grokfast_lamb: float = 2.0, *, foreach: bool | None = None, **base_options: Any) -> None:
        if not 0.0 <= grokfast_alpha < 1.0:
            raise ValueError(f"Invalid grokfast_alpha: {grokfast_alpha} (the EMA decay must be in [0, 1))")
        if not grokfast_lamb >= 0.0:
            raise ValueError(f"Invalid grokfast_lamb: {grokfast_lamb} (the amplification must be >= 0)")
        self.alpha, self.lamb = float(grokfast_alpha), float(grokfast_lamb)
        self._new_emas: list[tuple[Tensor, Tensor]] = []  # (parameter, EMA) first seen in this step
        super().__init__(params, base, foreach=foreach, **base_options)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        self._new_emas = []
        loss = super().step(closure)  # transform_ on every group, then the base's step
        for p, ema in self._new_emas:  # only now: the base has initialised (or left alone) its state of p
            self.state[p][STATE_KEY] = ema
        self._new_emas = []
        return loss

    def transform_(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        emas: list[Tensor] = []
        fresh: list[bool] = []
        for p, g in zip(params, grads):
            state = self.state.get(p)  # .get: do not create an empty entry in the base's defaultdict
            kept = state.get(STATE_KEY) if state else None
            ema = g.clone() if kept is None else kept
            if kept is None:
                self._new_emas.append((p, ema))
            emas.append(ema)
            fresh.append(kept is None)
        (amplify_slow_foreach if use_foreach(self.foreach, grads) else amplify_slow_reference)(
            grads, emas, fresh, self.alpha, self.lamb)


@dataclass(frozen=True)
class GrokfastOptions:
    base: str = option("adamw", help="registry name of the base optimizer stepped on the amplified gradients "
                                     "(its options follow, e.g. optimizer.lr)")
    grokfast_alpha: float = option(0.98, ge=0.0, lt=1.0, help="decay of the per-parameter gradient EMA per step "
                                                              "(the paper's alpha)")
    grokfast_lamb: float = option(2.0, ge=0.0, help="amplification: the gradient becomes g + lamb * EMA (the "
                                                    "paper's lambda)")


OPTIMIZERS.add("grokfast", Grokfast, options=GrokfastOptions,
               summary="Grokfast-EMA: amplify the slow (EMA) part of each gradient, then any base optimizer",
               source="trainlab", own=True, wrapper=True, tensor_lr=True,
               paper="Lee et al. 2024, Grokfast: Accelerated Grokking by Amplifying Slow Gradients, arXiv:2405.20233")
