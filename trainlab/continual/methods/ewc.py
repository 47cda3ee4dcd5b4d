"""``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural
networks", PNAS), in its online form (Schwarz et al. 2018, "Progress & Compress").

At the end of each task ``t``, on ``continual.ewc_samples`` (default 200) of its training rows (a seeded random
subset; all of them if it has fewer)::

    F_t  = (1/N) Σ_n (∇_θ log p(ŷ_n | x_n; θ))²   at θ = θ_t*,  ŷ_n ~ p(· | x_n; θ_t*)
    F    ← γ F + F_t                                 γ = continual.ewc_gamma (default 1)
    θ*   ← θ_t*                                       the parameters at the end of task t

and every later step adds ``(λ/2) Σ_i F_i (θ_i - θ*_i)²`` to the loss, ``λ = continual.ewc_lambda`` (default 100;
the Fisher is a mean over examples, so ``λ`` plays the role of the number of examples of the Laplace
approximation's precision ``N·F``). The logits are the scenario's (``ctx.logits``: restricted to the task's
classes when the task is known), and the Fisher is a diagonal per parameter tensor, of the model's trainable
parameters.

Decisions:

- **Sampled labels, not the true ones.** Kirkpatrick et al.'s ``F`` is the Fisher information of the model's
  distribution, ``E_x E_{y~p_θ}[(∇ log p)²]``; drawing ``ŷ`` from the model estimates it without bias with one
  backward pass per example. The "empirical Fisher" with the true labels (Avalanche's EWC) is another matrix,
  which Kunstner et al. 2019 ("Limitations of the empirical Fisher approximation for natural gradient descent")
  show can be a poor stand-in for the Fisher's curvature.
- **One penalty, online.** ``F ← γF + F_t`` with ``θ*`` the latest parameters is online EWC; ``γ = 1`` adds the
  Fishers up, which is the Laplace approximation of all past tasks at once (Huszár 2018, "Note on the quadratic
  penalties in elastic weight consolidation", PNAS) — not the original's sum of one penalty per task, each with
  its own ``θ*_t``, whose memory grows with the number of tasks.
- **Per-example gradients** (:mod:`~trainlab.continual.methods.fisher`): squaring a mini-batch's mean gradient
  would give another, smaller matrix. Cost: ``ewc_samples`` forward-backward passes of one example per task end.

The Fisher and ``θ*`` are checkpointed, so a resumed run has the same penalty.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.continual.methods.base import METHODS, Method, MethodContext, parameters, seeded
from trainlab.continual.methods.fisher import diagonal_fisher, sampled_labels


@METHODS.register("ewc", summary="elastic weight consolidation: a quadratic penalty (lambda/2) F (theta - "
                                 "theta*)^2 with the diagonal Fisher of the tasks done (online: F <- gamma F + F_t)",
                  paper="Kirkpatrick et al. 2017, Overcoming catastrophic forgetting in neural networks; Schwarz "
                        "et al. 2018, Progress & Compress (online EWC)")
class EWC(Method):
    """Online EWC with the diagonal Fisher on labels sampled from the model (module docstring)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        super().__init__(options, ctx)
        self.fisher: dict[str, Tensor] = {}  # empty until the first task ends
        self.anchor: dict[str, Tensor] = {}  # θ*

    def task_fisher(self, task: int, model: nn.Module) -> dict[str, Tensor]:
        """The diagonal Fisher ``F_t`` of task ``task`` at the model's present parameters."""
        rows = self.ctx.tasks[task].train
        generator = seeded(self.ctx.seed, "ewc", task)
        rows = rows[torch.randperm(len(rows), generator=generator)[:self.options.ewc_samples]].to(self.ctx.device)
        x = self.ctx.data.x_train[rows]

        def logits(inputs: Tensor) -> Tensor:
            return self.ctx.logits(model, inputs, task)

        return diagonal_fisher(model, logits, x, sampled_labels(model, logits, x, generator))

    def end_task(self, task: int, model: nn.Module) -> None:
        new = self.task_fisher(task, model)
        gamma = self.options.ewc_gamma
        self.fisher = {name: gamma * self.fisher[name] + f if name in self.fisher else f for name, f in new.items()}
        self.anchor = {name: p.detach().clone() for name, p in parameters(model).items()}

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.fisher:
            return None
        params = parameters(model)
        total = torch.stack([(f * (params[name] - self.anchor[name]).square()).sum()
                             for name, f in self.fisher.items()]).sum()
        return 0.5 * self.options.ewc_lambda * total

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher), "anchor": dict(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.ctx.device
        self.fisher = {name: f.to(device) for name, f in state.get("fisher", {}).items()}
        self.anchor = {name: a.to(device) for name, a in state.get("anchor", {}).items()}
