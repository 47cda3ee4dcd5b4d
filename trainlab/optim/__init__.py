"""Optimizers by name: ``build(name, params_or_model, **hparams)`` and ``names()``; trainlab's own classes.

The registry holds the optimizers of ``torch.optim``, trainlab's own algorithms (one per module, imported below
so they register), the schedule-free ones, and -- loaded at the first lookup beyond those names, see
:mod:`.external` -- those of ``pytorch_optimizer``. The classes can also be used directly, as ``torch.optim``'s::

    from trainlab.optim import Lion, PerpGrad
    opt = Lion(model.parameters(), lr=1e-4, weight_decay=1.0)
    opt = PerpGrad(model.parameters(), base=torch.optim.AdamW, lr=1e-2)
"""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

from trainlab.optim.registry import OPTIMIZERS, build, names, options_from_signature, resolve_options

# Importing a module registers its optimizers; each group appends its own lines under its marker.
# --- elementwise optimizers and wrappers ---
from trainlab.optim.lion import Lion
from trainlab.optim.lamb import Lamb
from trainlab.optim.diffgrad import DiffGrad
from trainlab.optim.perpgrad import PerpGrad
from trainlab.optim.coordclip import CoordClip
from trainlab.optim.grokfast import Grokfast
from trainlab.optim.autolrs import AutoLRS
from trainlab.optim import schedule_free  # noqa: F401
# --- orthogonalising optimizers (Muon, modular dualization, AGD) ---
from trainlab.optim.muon import Muon
from trainlab.optim.modular_duality import Dualized
from trainlab.optim.agd import AGD
# --- continual learning (task-aware wrappers: trainlab.optim.protocol.TaskAware) ---
from trainlab.optim.ogd import OGD
from trainlab.optim.sketchogd import SketchOGD
# --- other packages (a lazy source: registered at the first lookup of a name not above) ---
from trainlab.optim import external  # noqa: F401

__all__ = ["AGD", "AutoLRS", "CoordClip", "DiffGrad", "Dualized", "Grokfast", "Lamb", "Lion", "Muon", "OGD", "OPTIMIZERS",
           "PerpGrad", "SketchOGD", "build", "names", "options_from_signature", "resolve_options"]
