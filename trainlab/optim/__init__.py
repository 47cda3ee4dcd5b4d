"""Optimizers by name: ``build(name, params_or_model, **hparams)`` and ``names()``.

The registry holds trainlab's own algorithms (one per module, imported below so they register) and the
optimizers of ``torch.optim``.
"""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

from trainlab.optim.registry import OPTIMIZERS, build, names, options_from_signature, resolve_options

# Importing a module registers its optimizers; each group appends its own lines under its marker.
# --- elementwise optimizers and wrappers ---
from trainlab.optim import lion  # noqa: F401
from trainlab.optim import lamb  # noqa: F401
from trainlab.optim import diffgrad  # noqa: F401
from trainlab.optim import perpgrad  # noqa: F401
from trainlab.optim import coordclip  # noqa: F401
from trainlab.optim import autolrs  # noqa: F401
from trainlab.optim import schedule_free  # noqa: F401
# --- orthogonalising optimizers (Muon, modular dualization, AGD) ---
from trainlab.optim import muon  # noqa: F401
from trainlab.optim import modular_duality  # noqa: F401
from trainlab.optim import agd  # noqa: F401
# --- other packages ---
from trainlab.optim import external  # noqa: F401

__all__ = ["OPTIMIZERS", "build", "names", "options_from_signature", "resolve_options"]
