"""Adversarial training as a per-example loss: the loss at an attack's input x', mixed with the clean loss.

FGSM training: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" (mix 0.5).
PGD training: Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (min_θ E max_{‖δ‖ ≤ ε} L: mix 1). At step ``t`` (0-based), for each example::

    ε_t  = ε · min(1, t / W)            W = loss.adversarial_warmup (0: ε from the first step)
    α_t  = α · ε_t / ε                  α = loss.adversarial_alpha, default 2.5·ε/steps (attacks.default_alpha)
    x'   = fgsm(f, x, y, ε_t)           or  pgd(f, x, y, ε_t, α_t, steps, norm), random start
    ℓ(x) = (1 − m) · L(f(x), y) + m · L(f(x'), y)          m = loss.adversarial_mix

The attack maximises the primary loss (the workload's or ``loss.function``'s); ``L`` is the training loss of
one output -- the primary loss plus the Z-loss term when ``loss.z_loss`` is set, so a regulariser of the output
applies to every output that is trained on. The ramp scales the whole threat model (α stays the same fraction
of ε); at ``ε_t = 0`` and with ``m = 0`` the attack is not run and the step is plain training, bit for bit.

Units: ε and α are in the units of the model's inputs (standardised features, one-hot codes: see
:mod:`trainlab.robust.attacks`), with no box (``bounds=None``). Defaults: no ε (it must be given), PGD with 10
steps in L∞ (torchattacks v3's PGD), ``m`` = 0.5 for FGSM (Goodfellow's mix) and 1 for PGD (Madry's).

Mode: the attack runs the model in eval mode (``trainlab.robust.attacks``: dropout off, batch-norm running
statistics, modes restored), the training forward passes in train mode. Madry et al.'s TensorFlow code generated
its examples in training mode; eval mode (as TRADES, Zhang et al. 2019, does) keeps the attack a fixed function
of the input -- examples do not interact through batch statistics, the attack's iterates never enter the
running statistics, and no dropout mask is drawn, so a resumed run repeats the same attacks. For trainlab's
models that read real-valued inputs (MLP, CNNs: no dropout, no batch norm) the two modes compute the same
function. The random start draws from torch's global generator, which the trainer seeds and checkpoints.

COST per step (N examples, k = steps): FGSM 1 forward + 1 backward of the attack, PGD k of each; plus the
forward (and backward) of x' besides the clean one (the clean one is skipped at m = 1). The attack is part of
the algorithm: its time counts as training time. Only the input gradient is taken, so no parameter ``.grad``
is touched before the step's backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from trainlab.robust.attacks import Norm, default_alpha, fgsm, pgd

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output, target) -> per-example losses

# m when loss.adversarial_mix is not given: Goodfellow et al.'s 0.5 L(x) + 0.5 L(x'), Madry et al.'s L(x') alone
DEFAULT_MIX = {"fgsm": 0.5, "pgd": 1.0}


def epsilon_at(step: int, eps: float, warmup: int) -> float:
    """ε at step ``step``: ``ε · min(1, step / warmup)`` (0 at step 0, ε from step ``warmup`` on); ε if no warm-up."""
    return eps if warmup == 0 else eps * min(1.0, step / warmup)


@dataclass(frozen=True)
class AdversarialLoss:
    """The per-example adversarial training loss of the module doc; ``(net, x, y, step) -> losses``."""

    attack: str  # fgsm | pgd
    eps: float
    alpha: float | None  # None: attacks.default_alpha(ε_t, steps)
    steps: int
    norm: Norm
    mix: float
    warmup: int
    attack_loss: LossFn  # what the attack maximises: the primary loss
    train_loss: LossFn  # what is trained on, at x and at x'

    @classmethod
    def from_options(cls, options: Any, *, attack_loss: LossFn, train_loss: LossFn) -> AdversarialLoss:
        """The loss ``loss.adversarial*`` describes (``options`` is a validated LossOptions)."""
        mix = options.adversarial_mix if options.adversarial_mix is not None else DEFAULT_MIX[options.adversarial]
        return cls(options.adversarial, options.adversarial_eps, options.adversarial_alpha, options.adversarial_steps,
                   options.adversarial_norm, mix, options.adversarial_warmup, attack_loss, train_loss)

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, step: int) -> Tensor:
        eps = epsilon_at(step, self.eps, self.warmup)
        if eps == 0 or self.mix == 0:
            return self.train_loss(net(x), y)
        adversarial = self.train_loss(net(self.perturb(net, x, y, eps)), y)
        if self.mix == 1:
            return adversarial
        return (1 - self.mix) * self.train_loss(net(x), y) + self.mix * adversarial

    def perturb(self, net: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """x' of radius ``eps`` (this step's ε) for the batch ``(x, y)``, detached."""
        if self.attack == "fgsm":
            return fgsm(net, x, y, eps, loss_fn=self.attack_loss)
        alpha = default_alpha(eps, self.steps) if self.alpha is None else self.alpha * eps / self.eps
        return pgd(net, x, y, eps, alpha, self.steps, norm=self.norm, loss_fn=self.attack_loss)
