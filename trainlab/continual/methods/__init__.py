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
"""

from trainlab.continual.methods.base import METHODS, Method, MethodContext
# Each module registers its method; in this order ``trainlab list methods`` shows them.
from trainlab.continual.methods import replay, power_law, ewc, refresh, nmc  # noqa: F401

__all__ = ["METHODS", "Method", "MethodContext"]
