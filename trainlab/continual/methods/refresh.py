"""``refresh``: refresh learning, unlearn then relearn (Wang et al. 2024, "A Unified and General Framework for
Continual Learning", ICLR; reference code joey-wang123/CL-refresh-learning, ``models/derpp.py``).

Before the optimizer trains on a batch ``B``, the parameters take one small step that *unlearns* ``B``; the
optimizer's step on ``B`` then relearns it. Per parameter tensor ``θ`` (the reference code's ``unlearn``)::

    Δ  = η ∇_θ L_B(θ)                       one SGD step of size η = 0.01 on -L_B (ascent), the reference's
    Δ̂  = Δ · ‖θ‖ / (‖Δ‖ + 1e-20)             rescaled to the norm of the tensor itself
    θ ← θ + δ (1 + c F)^(-1) ⊙ (Δ̂ + σ ξ)    ξ ~ N(0, I)

with ``δ = continual.refresh_delta`` (default 1e-5), ``c = continual.refresh_fisher`` (default 0.001),
``σ = continual.refresh_noise`` (default 0.001), ``L_B`` the mean loss of the batch's rows (the scenario's
logits). The rescaling cancels ``η``: the step is ``δ`` times a direction of norm ``‖θ‖``, whatever ``η``, except
through the ``1e-20`` guard; so ``η`` is a constant here (the reference's 0.01), not an option that would do
nothing. ``F`` is a diagonal Fisher, from each task's
end (the reference's ``end_task``), on ``continual.refresh_samples`` of its training rows (0, the default: all,
as the reference)::

    F_t = (1/N) Σ_n p(y_n | x_n) (∇_θ log p(y_n | x_n))²     true labels, weighted by their probability
    F  ← τ F + F_t                                            τ = continual.refresh_decay (default 1e-5)

so that parameters important to finished tasks move less. Units: ``δ`` is a fraction of each tensor's norm per
step; ``c`` multiplies Fisher entries (squared log-likelihood gradients).

How it maps on trainlab's hooks, and where it differs from the reference:

- The unlearning of step ``s + 1``'s batch runs in :meth:`Refresh.after_step` of step ``s`` (the batch is a pure
  function of the step: :meth:`TaskSampler.current`), so the optimizer's step ``s + 1`` relearns exactly the
  batch that was unlearned, as the reference's ``observe`` does; at a task's end it runs after the Fisher
  (:meth:`Refresh.end_task`), as in the reference, where ``end_task`` comes before the next ``observe``. The
  first step of the run has no unlearning before it (no hook runs before it).
- The reference adds refresh to DER++; here it is a method of its own over plain fine-tuning (no buffer), and
  the batch it unlearns is the current task's rows only, as the reference unlearns the stream batch only.
- The Fisher is computed in eval mode (the reference uses a copy in train mode; the bundled models differ only
  in the transformer's dropout) and, with ``refresh_samples > 0``, on a seeded subset; the noise comes from a
  generator seeded by (seed, step), not the global one. The last task's Fisher is not computed: nothing after
  it would use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.continual.methods.base import METHODS, Method, MethodContext, parameters, seeded
from trainlab.continual.methods.fisher import diagonal_fisher
from trainlab.continual.sequence import TaskSampler, task_starts

_GUARD = 1e-20  # the reference's epsilon in the rescaling (a zero gradient gives a zero direction, not a NaN)


ASCENT_LR = 0.01  # the reference's unlearning step size, which the rescaling cancels (module docstring)


def refresh_update(param: Tensor, grad: Tensor, fisher: Tensor | None, noise: Tensor, *, delta: float,
                   fisher_weight: float, noise_scale: float, lr: float = ASCENT_LR) -> Tensor:
    """The change refresh learning makes to one parameter tensor ``param`` whose loss gradient is ``grad``:
    ``δ (1 + c F)^(-1) ⊙ (Δ̂ + σ ξ)`` with ``Δ̂`` the ascent step ``lr · grad`` rescaled to the norm of ``param``
    (module docstring); ``fisher`` None counts as zero."""
    step = lr * grad  # θ' - θ after one SGD step on the negated loss
    direction = step * (param.norm() / (step.norm() + _GUARD))
    damping = 1.0 if fisher is None else 1.0 / (1.0 + fisher_weight * fisher)
    return delta * damping * (direction + noise_scale * noise)


@METHODS.register("refresh", summary="refresh learning: before each step, unlearn its batch by a small rescaled "
                                     "gradient-ascent step damped by the Fisher, plus noise; the step relearns it",
                  paper="Wang et al. 2024, A Unified and General Framework for Continual Learning (refresh "
                        "learning)")
class Refresh(Method):
    """Unlearn-relearn around every optimizer step (module docstring: the rule, defaults, deviations)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        super().__init__(options, ctx)
        self.starts = task_starts(ctx.tasks)
        self.switches = frozenset(self.starts)
        self.total = self.starts[-1] + ctx.tasks[-1].steps
        self.fisher: dict[str, Tensor] = {}  # empty until the first task ends
        self.sampler: TaskSampler | None = None

    def attach(self, sampler: TaskSampler) -> None:
        self.sampler = sampler

    def after_step(self, step: int, rows: Tensor, model: nn.Module) -> None:
        upcoming = step + 1
        if upcoming < self.total and upcoming not in self.switches:  # at a switch, end_task unlearns after the Fisher
            self.unlearn(upcoming, model)

    def end_task(self, task: int, model: nn.Module) -> None:
        if task + 1 == len(self.ctx.tasks):
            return
        new = self.task_fisher(task, model)
        tau = self.options.refresh_decay
        self.fisher = {name: tau * self.fisher[name] + f if name in self.fisher else f for name, f in new.items()}
        self.unlearn(self.starts[task + 1], model)

    def task_fisher(self, task: int, model: nn.Module) -> dict[str, Tensor]:
        """``F_t``: the probability-weighted empirical Fisher of task ``task`` at the present parameters."""
        rows = self.ctx.tasks[task].train
        if self.options.refresh_samples:
            pick = torch.randperm(len(rows), generator=seeded(self.ctx.seed, "refresh fisher", task))
            rows = rows[pick[:self.options.refresh_samples]]
        rows = rows.to(self.ctx.device)
        return diagonal_fisher(model, lambda x: self.ctx.logits(model, x, task), self.ctx.data.x_train[rows],
                               self.ctx.data.y_train[rows], weighted=True)

    def unlearn(self, step: int, model: nn.Module) -> None:
        """Move the parameters by refresh learning's unlearning step on the batch that step ``step`` trains."""
        assert self.sampler is not None, "attach() was not called"
        rows = self.sampler.current(step).to(self.ctx.device)
        task = self.sampler.task(step)
        params = parameters(model)
        x, y = self.ctx.data.x_train[rows], self.ctx.data.y_train[rows]
        loss = self.ctx.loss(self.ctx.logits(model, x, task), y).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        generator = seeded(self.ctx.seed, "refresh", step, device=self.ctx.device)
        o = self.options
        with torch.no_grad():
            for (name, p), grad in zip(params.items(), grads):
                noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                grad = torch.zeros_like(p) if grad is None else grad
                p.add_(refresh_update(p, grad, self.fisher.get(name), noise, delta=o.refresh_delta,
                                      fisher_weight=o.refresh_fisher, noise_scale=o.refresh_noise))

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = {name: f.to(self.ctx.device) for name, f in state.get("fisher", {}).items()}
