"""Optimizers by name: ``build(name, params_or_model, **hparams)`` and ``names()``.

The registry holds trainlab's own algorithms (one per module, imported below so they register) and the
optimizers of ``torch.optim``.
"""

from trainlab.optim.registry import OPTIMIZERS, build, names, options_from_signature, resolve_options

# Importing a module registers its optimizers; each group appends its own lines under its marker.
# --- elementwise optimizers and wrappers ---
# --- orthogonalising optimizers (Muon, modular dualization, AGD) ---
# --- other packages ---

__all__ = ["OPTIMIZERS", "build", "names", "options_from_signature", "resolve_options"]
