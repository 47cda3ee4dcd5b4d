"""Schedule-free optimizers (Defazio et al. 2024, "The Road Less Scheduled"), from the maintained ``schedulefree``
package (facebookresearch/schedule_free), registered as they are -- not rewritten.

The rule (SGD form; the AdamW/RAdam forms divide the gradient by Adam's ``sqrt(v_hat) + eps`` first)::

    y = (1 - beta) * z + beta * x          gradients are taken at y (the weights the model holds in train mode)
    z <- z - lr * grad f(y)
    x <- (1 - c) * x + c * z,  c = w_t / sum_{i<=t} w_i,  w_t = t^r * lr_max^weight_lr_power

``x`` is an average of the ``z`` iterates, so no decaying schedule is needed: the trainer's default
``schedule=constant`` is the intended use (``warmup_steps`` is the package's own linear warm-up).

Modes (the part users trip over): the model holds ``y`` in train mode and ``x`` in eval mode; an optimizer
must be in train mode to step. The trainer calls ``optimizer.train()`` right after building it and
``optimizer.eval()`` / ``optimizer.train()`` around every evaluation, so evaluations (and the metrics) use
``x``. Checkpoints are written in train mode (model = ``y``, optimizer state holds ``z`` and the mode flag),
which is what resuming needs; code that takes the weights for deployment from a run must call
``optimizer.eval()`` first.

Registered: ``adamw_schedulefree``, ``sgd_schedulefree``, ``radam_schedulefree``; options come from the
constructors (``options_from_signature``) with the package's defaults (AdamW/RAdam lr 0.0025, betas
(0.9, 0.999), eps 1e-8; SGD lr 1.0, momentum 0.9; weight_decay 0, r 0, weight_lr_power 2).
"""

from __future__ import annotations

import schedulefree

from trainlab.optim.registry import OPTIMIZERS, options_from_signature, takes_tensor_lr

PAPER = "Defazio et al. 2024, The Road Less Scheduled"

for _name, _cls, _summary in (
    ("adamw_schedulefree", schedulefree.AdamWScheduleFree, "Schedule-free AdamW (needs train/eval modes)"),
    ("sgd_schedulefree", schedulefree.SGDScheduleFree, "Schedule-free SGD with momentum (needs train/eval modes)"),
    ("radam_schedulefree", getattr(schedulefree, "RAdamScheduleFree", None),
     "Schedule-free RAdam, no warm-up needed (needs train/eval modes)"),
):
    if _cls is not None:
        OPTIMIZERS.add(_name, _cls, options=options_from_signature(_cls), summary=_summary,
                       source=f"schedulefree.{_cls.__name__}", own=False, paper=PAPER, tensor_lr=takes_tensor_lr(_cls))
