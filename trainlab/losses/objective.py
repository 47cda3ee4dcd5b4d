"""The training objective the trainer minimises: a primary loss plus the regularisers named in ``loss.*``.

    per-example loss = primary(output, y) [+ z_loss * logZ^2] [+ ELR term]       (logged, reduced by the trainer)
    batch penalty    = grokalign * mean_x est||J(x)||_F                           (added to the reduced loss)

Robust training replaces the per-example loss (the step index sets its radius warm-up):

    loss.adversarial=fgsm|pgd   (1 - m) L(f(x)) + m L(f(x')), x' an attack in the eps-ball   (losses.adversarial)
    loss.certified=ibp          kappa CE(f(x)) + (1 - kappa) CE(-IBP margin bounds) [+ warm-up regularisers as the
                                batch penalty]                                                  (robust.certified)

``primary`` is the workload's own loss (``loss.function=default``), StableMax cross-entropy in float64
(``stablemax``) or the spherical Z-loss (``spherical_z``); evaluation and probes use ``primary`` alone, so
validation losses stay comparable across regularisers. With nothing configured, :class:`Objective` is a thin
call of ``workload.loss`` (no extra work per step).

Refused combinations (one-line :class:`~trainlab.config.ConfigError`): the classification-only pieces on a
regression workload; GrokAlign with ``compile=true`` (compiled graphs have no double backward) or under DDP
(double backward through DDP's hooks is not supported); ELR under DDP (each process would keep its own
table of running targets).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from trainlab.config import ConfigError


class Objective:
    """Builds the per-example training loss and the batch penalty for one run (see the module doc)."""

    def __init__(self, options: Any, workload: Any, model: nn.Module, *, n_train: int, n_classes: int | None,
                 distributed: bool = False, compiled: bool = False) -> None:
        from trainlab.workloads.base import RegressionWorkload

        self.options, self.workload = options, workload
        regression = isinstance(workload, RegressionWorkload)
        classification_only = [name for name, on in (("loss.function=" + options.function,
                                                       options.function != "default"),
                                                      ("loss.z_loss", options.z_loss > 0), ("loss.elr", options.elr > 0))
                               if on]
        if regression and classification_only:
            raise ConfigError(classification_only[0].split("=")[0], f"needs class logits; workload {workload.name} "
                                                                    "is a regression")
        self.grokalign = None
        if options.grokalign > 0:
            if compiled:
                raise ConfigError("loss.grokalign", "needs double backward, which compiled models lack; "
                                                    "set compile=false")
            if distributed:
                raise ConfigError("loss.grokalign", "is not supported with several processes (double backward "
                                                    "through DDP)")
            from trainlab.losses.grokalign import GrokAlign

            self.grokalign = GrokAlign(options.grokalign, n_proj=options.grokalign_projections)
            # token inputs: differentiate with respect to the token embeddings (the first Embedding module)
            self.wrt = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        self.elr = None
        if options.elr > 0:
            if distributed:
                raise ConfigError("loss.elr", "is not supported with several processes (one table of running "
                                              "targets per process)")
            if n_classes is None:
                raise ConfigError("loss.elr", "needs a classification workload with a fixed number of classes")
            from trainlab.losses.early_learning import EarlyLearningRegularizer

            self.elr = EarlyLearningRegularizer(n_train, n_classes, beta=options.elr_beta, lam=options.elr)
        # adversarial: per-example losses; certified: (per-example losses, warm-up regulariser or None)
        self.adversarial: Any = None
        self.certified: Any = None
        robust = self._robust_loss(options, workload, model, regression, distributed)
        if options.adversarial != "none":
            self.adversarial = robust
        else:
            self.certified = robust
        # nothing configured: the training step calls the workload's loss directly (decided once, not per step)
        self.plain = (options.function == "default" and options.z_loss == 0 and self.grokalign is None
                      and self.elr is None and robust is None)

    def _robust_loss(self, options: Any, workload: Any, model: nn.Module, regression: bool,
                     distributed: bool) -> Any:
        """The adversarial or certified loss ``loss.*`` asks for, or None."""
        method = ("adversarial", options.adversarial) if options.adversarial != "none" else \
            ("certified", options.certified) if options.certified != "none" else None
        if method is None:
            return None
        key = f"loss.{method[0]}"
        if regression:
            raise ConfigError(key, f"needs class logits; workload {workload.name} is a regression")
        if distributed:
            raise ConfigError(key, "is not supported with several processes (the attack's or bounds' forward "
                                   "passes would run through DDP)")
        others = [name for name, on in (("loss.grokalign", self.grokalign is not None), ("loss.elr", self.elr is not None))
                  if on]
        if method[0] == "certified":  # its loss is the cross-entropy of bounds, not of one output
            others += [name for name, on in (("loss.function", options.function != "default"),
                                              ("loss.z_loss", options.z_loss > 0)) if on]
        if others:
            raise ConfigError(key, f"replaces the training loss and cannot be combined with {others[0]}")
        if method[0] == "adversarial":
            from trainlab.losses.adversarial import AdversarialLoss

            return AdversarialLoss.from_options(options, attack_loss=self.primary, train_loss=self._with_z_loss)
        from trainlab.robust.certified import CertifiedLoss

        return CertifiedLoss.from_options(options, model)

    def _with_z_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The per-example training loss of one output: the primary loss plus the Z-loss term when set."""
        losses = self.primary(output, target)
        if self.options.z_loss > 0:
            from trainlab.losses.zloss import z_loss

            losses = losses + z_loss(output.float(), self.options.z_loss)
        return losses


    def primary(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example (per-token) loss without regularisers: what evaluation reports and probes differentiate."""
        function = self.options.function
        if function == "stablemax":
            from trainlab.losses.stablemax import stablemax_cross_entropy

            return stablemax_cross_entropy(output, target).float()
        if function == "spherical_z":
            from trainlab.losses.zloss import spherical_z_loss

            return spherical_z_loss(output.float(), target)
        return self.workload.loss(output, target)

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, idx: Tensor,
                 step: int) -> tuple[Tensor, Tensor | None]:
        """(per-example training losses, batch penalty or None) for the batch ``x, y`` at dataset rows ``idx`` of
        optimizer step ``step`` (0-based; robust losses warm their radius up over steps)."""
        if self.plain:
            return self.workload.loss(net(x), y), None
        if self.adversarial is not None:
            return self.adversarial(net, x, y, step), None
        if self.certified is not None:
            return self.certified(net, x, y, step)
        penalty = None
        if self.grokalign is not None:
            output, penalty = self.grokalign.forward(net, x, wrt=self.wrt)
        else:
            output = net(x)
        losses = self._with_z_loss(output, y)
        if self.elr is not None:
            losses = losses + self.elr(output.float(), idx.to(self.elr.target.device))
        return losses, penalty

    def mean(self, net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The batch's mean training loss, reduced by the loss itself; a plain objective's only (the workload's
        loss and no regulariser: nothing else needs the per-example values)."""
        if not self.plain:
            raise RuntimeError("Objective.mean is for a plain objective; call the objective for per-example losses")
        return self.workload.mean_loss(net(x), y)

    def state_dict(self) -> dict[str, Any]:
        return {"elr": self.elr.state_dict()} if self.elr is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.elr is not None and "elr" in state:
            self.elr.load_state_dict(state["elr"])


def n_classes_of(output_spec: Any) -> int | None:
    """The class count of a DataSpec (its ``n_outputs`` for per-example classification), else None."""
    return int(output_spec.n_outputs) if getattr(output_spec, "task", None) == "classification" else None

