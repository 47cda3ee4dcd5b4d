"""Optimizers by name: ``build(name, params, **hparams)`` and ``names()``.

Today the registry holds the optimizers of ``torch.optim``; trainlab's own algorithms register here too.
"""

from trainlab.optim.registry import OPTIMIZERS, build, names, options_from_signature

__all__ = ["OPTIMIZERS", "build", "names", "options_from_signature"]
