"""Wrappers that transform the gradients, then step any optimizer (the *base*).

:class:`GradientTransformWrapper` is the shared plumbing of ``perpgrad`` and ``coordclip``. It builds the base
from a registry name through :func:`trainlab.optim.build` with every one of the base's options (nothing is
dropped), or from an optimizer class called with them as given (``PerpGrad(params, base=torch.optim.AdamW,
lr=1e-3)``). And it *is* the base for everything else: ``param_groups`` and ``state`` are the base's own
objects (so the trainer's ``group["lr"] = ...`` reaches the base), ``state_dict``/``load_state_dict``/
``zero_grad``/``add_param_group`` delegate to it, and ``train()``/``eval()`` reach bases that have them
(schedule-free optimizers).
A subclass only implements :meth:`GradientTransformWrapper.transform_`.

Registered with meta ``wrapper=True``, a wrapper's options are its own (``base`` plus e.g. ``threshold``)
followed by its base's, so ``optimizer=perpgrad optimizer.base=adamw optimizer.lr=1e-2`` works on the
command line and ``build("perpgrad", params, base="adamw", lr=1e-2)`` in Python. The base may be another such
wrapper: ``optimizer=grokfast optimizer.base=perpgrad`` is Grokfast over ⊥Grad over perpgrad's default base
(AdamW), with the options of all three; ``optimizer.base=perpgrad:lion`` names the inner wrapper's base too
(see :func:`trainlab.optim.registry.resolve_options`).

The checkpoint (``state_dict``) is the base's, unchanged: perpgrad and coordclip keep no state of their own, and
grokfast keeps its EMA in the base's per-parameter state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class GradientTransformWrapper(torch.optim.Optimizer):
    """Modify the gradients in place (:meth:`transform_`), then step the base optimizer.

    Args:
        params: tensors or param-group dicts (passed to the base).
        base: registry name of the base optimizer (e.g. ``"adamw"``; options validated by the registry), or an
            optimizer class (e.g. ``torch.optim.AdamW``; built as ``base(params, **base_options)``).
        foreach: the ``torch._foreach_*`` form of the transform (True), the per-tensor reference (False), or by
                device (None, default: foreach on CUDA only; per tensor measured faster on CPU).
        **base_options: every option of the base (e.g. ``lr``, ``betas``).
    """

    def __init__(self, params: Iterable[Any], base: str | type[torch.optim.Optimizer], *, foreach: bool | None = None,
                 **base_options: Any) -> None:
        from trainlab.optim.registry import CHAIN, build  # the registry imports optimizers; avoid a cycle

        self.base_name = base if isinstance(base, str) else base.__name__
        self.foreach = foreach
        if isinstance(base, str):  # "perpgrad:lion": the wrapper perpgrad, over lion (registry.CHAIN)
            head, chained, rest = base.partition(CHAIN)
            self.optimizer: torch.optim.Optimizer = build(head, params, **({"base": rest} if chained else {}),
                                                          **base_options)
        else:
            self.optimizer = base(params, **base_options)
        # What torch.optim.Optimizer.__init__ sets besides defaults/state/param_groups (those are the base's),
        # so step hooks, state-dict hooks and profiling work on the wrapper itself.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # The base's objects, not copies.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def transform_(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        """Modify ``grads`` (the ``.grad`` of ``params``, all not None) in place. Subclasses implement it."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                grads = [p.grad for p in params]
                if any(g.is_sparse for g in grads):
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self.transform_(params, grads, group)
        self.optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def train(self) -> None:
        """Put a base with a train mode (schedule-free) into it; a no-op for other bases."""
        set_mode = getattr(self.optimizer, "train", None)
        if callable(set_mode):
            set_mode()

    def eval(self) -> None:
        """Put a base with an eval mode (schedule-free: evaluation weights) into it; a no-op for other bases."""
        set_mode = getattr(self.optimizer, "eval", None)
        if callable(set_mode):
            set_mode()

    def __getstate__(self) -> dict[str, Any]:  # pickling/deepcopy: the wrapper's attributes, base included
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        inner = "\n".join("  " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}(base={self.base_name!r},\n{inner}\n)"
