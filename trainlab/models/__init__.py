"""Models: MLP, 1-D and 2-D CNNs, a decoder-only transformer. Built from a :class:`DataSpec`."""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

# Importing the modules registers their models.
from trainlab.models import mlp  # noqa: I001,E402,F401  (registration order = listing order)
from trainlab.models import cnn  # noqa: E402,F401
from trainlab.models import transformer  # noqa: E402,F401
from trainlab.models.registry import MODELS, build, input_kinds, names, register

__all__ = ["MODELS", "build", "input_kinds", "names", "register"]
