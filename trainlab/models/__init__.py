"""Models: MLP, 1-D and 2-D CNNs, a decoder-only transformer. Built by name from a :class:`DataSpec`
(``build("mlp", spec, width=256)``), or as plain ``nn.Module`` classes (``MLP(64, 10, width=256)``)."""

# ruff: noqa: I001  -- import order is registration order (own names before other packages)

# Importing the modules registers their models.
from trainlab.models import mlp  # noqa: I001,E402,F401  (registration order = listing order)
from trainlab.models import cnn  # noqa: E402,F401
from trainlab.models import transformer  # noqa: E402,F401
from trainlab.models.cnn import ConvNet
from trainlab.models.mlp import MLP
from trainlab.models.registry import MODELS, build, input_kinds, names, register
from trainlab.models.transformer import Transformer

__all__ = ["MLP", "MODELS", "ConvNet", "Transformer", "build", "input_kinds", "names", "register"]
