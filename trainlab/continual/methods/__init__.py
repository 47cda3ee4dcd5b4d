"""Continual-learning methods: what a run does besides plain training when tasks come one after another.

``continual.method=NAME`` picks one; ``trainlab list methods --options`` shows each with its paper and options.
The protocol (:class:`Method`'s hooks and when the trainer calls them) is in :mod:`.base`; one method per module:

- ``naive`` (:class:`Method`): fine-tune on each task in turn, the lower baseline;
- ``replay`` (:mod:`.replay`): experience replay from a reservoir buffer (Chaudhry et al. 2019);
- ``power_law`` (:mod:`.power_law`): the buffer's old tasks rehearsed on a power-law schedule (Gandhi et al. 2024);
- ``ewc`` (:mod:`.ewc`): elastic weight consolidation, online (Kirkpatrick et al. 2017; Schwarz et al. 2018);
- ``refresh`` (:mod:`.refresh`): unlearn-relearn around every step (Wang et al. 2024);
- ``nmc`` (:mod:`.nmc`): replay, evaluated by iCaRL's nearest mean of exemplars (Rebuffi et al. 2017).

:mod:`.fisher` holds the per-example diagonal Fisher that ``ewc`` and ``refresh`` share.

Not built, and why:

- IBCL (Lu et al. 2023) keeps a posterior per task (a Bayes-by-backprop network: a mean and a variance per
  weight, trained by an ELBO from up to three priors per task), adds one only when far enough from the others,
  and for a preference w over tasks samples a model from the mixture Σ w_i q_i. The trainer has no such model or
  objective, and a run's metrics describe one model, not one per preference. A shortcut through EWC's Laplace
  approximation degenerates: in ~10^5 dimensions a draw from a Gaussian mixture comes from essentially one
  component, so "the model for w" would be task i's θ* with probability w_i, not a trade-off. A faithful version
  needs a variational layer in trainlab/models, an ELBO loss and a model per preference (``Method.scores`` through
  ``torch.func.functional_call``), checked against the authors' code.
- Dynamic sparse training per task (masks pruned and regrown at each task) needs masked layers and a prune/grow
  schedule in the optimizer step; it belongs with the pruning family (issue 16).
"""

from trainlab.continual.methods.base import METHODS, Method, MethodContext
# Each module registers its method; in this order ``trainlab list methods`` shows them.
from trainlab.continual.methods import replay, power_law, ewc, refresh, nmc  # noqa: F401

__all__ = ["METHODS", "Method", "MethodContext"]
