"""``nmc``: the nearest-mean-of-exemplars classifier of iCaRL (Rebuffi et al. 2017, "iCaRL: Incremental
Classifier and Representation Learning", CVPR), on a network trained with experience replay.

Training is :mod:`~trainlab.continual.methods.replay`'s (a reservoir buffer of ``continual.memory`` rows, default
200; ``continual.replay_batch`` of them, default 32, in every batch). Evaluation replaces the network's head by
the class means of the buffer's rows in its feature space::

    φ(x)  = f(x) / ‖f(x)‖                f: the model's penultimate features, model.features(x)
    μ_y   = m_y / ‖m_y‖,  m_y = mean of φ(p) over the buffer rows p of class y
    ŷ(x)  = argmin_y ‖φ(x) - μ_y‖

(iCaRL normalises the features and re-normalises their means). The scores handed to evaluation are
``-‖φ(x) - μ_y‖²``, so the accuracy is the nearest mean's and the reported loss is the cross-entropy of those
scores (a softmax over negative squared distances; not comparable with another method's loss). A class without a
row in the buffer (a task not trained yet) scores -5, below any class that has one (two unit vectors are at most
2 apart); when the task is known (task-incremental) the other tasks' classes are at -inf, as for the logits. While
the buffer is empty (before the first step) the model's own logits are used.

The means are computed with the network as it is at each evaluation (features drift as it trains), then kept until
the next optimizer step. Deviation: iCaRL chooses exemplars by herding, class by class, ``memory / classes`` each;
here they are replay's reservoir sample, so that ``nmc`` is ``replay`` with another classifier (the comparison
isolates the classifier), and every class's share of the buffer is proportional to its rows seen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.continual.methods.base import METHODS, MethodContext
from trainlab.continual.methods.replay import Replay
from trainlab.errors import ConfigError

ABSENT = -5.0  # the score of a class without exemplars: below -‖a - b‖² >= -4 for unit vectors a, b


def features_of(model: nn.Module, x: Tensor) -> Tensor:
    """The model's penultimate features of the batch ``x``, ``(batch, d)``; a one-line :class:`ConfigError` for a
    model without a ``features(x)`` of that shape (the MLP and CNNs have one, and ``param.output_scale`` forwards
    it; the transformer's is per position)."""
    features = getattr(model, "features", None)
    out = features(x) if callable(features) else None
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ConfigError("continual.method", f"nmc classifies by the model's features, but {type(model).__name__} "
                                              "has no features(x) of shape (batch, d); use mlp, cnn1d or cnn2d")
    return out


def unit(v: Tensor) -> Tensor:
    return torch.nn.functional.normalize(v.float(), dim=-1)


def class_means(features: Tensor, labels: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """(``(n_classes, d)`` re-normalised means of the L2-normalised ``features`` per class, ``(n_classes,)`` whether
    a class has a row)."""
    phi = unit(features)
    sums = torch.zeros(n_classes, phi.shape[-1], dtype=phi.dtype, device=phi.device).index_add_(0, labels, phi)
    present = torch.bincount(labels, minlength=n_classes) > 0
    return unit(sums), present


def nearest_mean_scores(features: Tensor, means: Tensor, present: Tensor) -> Tensor:
    """``-‖φ(x) - μ_y‖²`` for every row and class; :data:`ABSENT` for classes without exemplars."""
    d2 = (unit(features)[:, None, :] - means[None, :, :]).square().sum(-1)
    return torch.where(present, -d2, torch.full_like(d2, ABSENT))


@METHODS.register("nmc", summary="experience replay, evaluated by the nearest mean of the buffer's exemplars in "
                                 "the model's feature space (iCaRL's classifier)",
                  paper="Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning")
class NearestMeanOfExemplars(Replay):
    """Replay for training; the nearest class mean of the buffer's rows for evaluation (module docstring)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        super().__init__(options, ctx)
        self.n_classes = int(ctx.data.y_train.max()) + 1
        self._means: tuple[Tensor, Tensor] | None = None  # (means, present) for the present weights

    def after_step(self, step: int, rows: Tensor, model: nn.Module) -> None:
        super().after_step(step, rows, model)
        self._means = None  # the step moved the features

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._means = None

    def scores(self, model: nn.Module, x: Tensor, task: int) -> Tensor | None:
        if len(self.buffer) == 0:
            return None
        if self._means is None:
            rows = self.buffer.rows.to(self.ctx.device)
            self._means = class_means(features_of(model, self.ctx.data.x_train[rows]), self.ctx.data.y_train[rows],
                                      self.n_classes)
        out = nearest_mean_scores(features_of(model, x), *self._means)
        classes = self.ctx.tasks[task].classes
        if self.ctx.scenario == "task" and classes is not None:  # the task is known: its classes only
            allowed = torch.zeros(self.n_classes, dtype=torch.bool, device=out.device)
            allowed[classes.to(out.device)] = True
            out = out.masked_fill(~allowed, float("-inf"))
        return out
