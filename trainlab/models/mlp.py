"""A fully connected network (multi-layer perceptron).

``mlp`` flattens its input (vectors, signals or images) and applies ``depth`` hidden layers of ``width``
units, each ``Linear -> activation``, then a linear ``head`` to ``spec.n_outputs`` values. Defaults: depth 2,
width 200, ReLU, biases on, ``init_scale`` 1 (PyTorch's default initialisation). ``depth=0`` is a linear
model; ``activation=identity`` a deep linear network (Saxe et al. 2014); ``activation=quadratic`` the
``x²`` network used in analyses of grokking modular arithmetic (Gromov 2023). ``init_scale`` multiplies every
parameter after initialisation (large: Liu et al. 2023, "Omnigrok"; small: Saxe et al. 2014).

Layers are named: ``model.body.fc0``, ``model.body.act0``, ..., and ``model.head`` is the last layer;
``model.features(x)`` returns the representation the head reads.

``batchnorm=true`` puts a ``BatchNorm1d`` (``model.body.bn0``, ...) after every hidden Linear, before its activation
-- "BN in every layer" of Shi et al. 2021, "Fast Certified Robust Training with Short Warmup", which balances
the ReLU states of interval-bound training. Off by default, so existing runs keep their exact structure, state
dict and outputs. Batch statistics in training need batches of at least 2 examples.

``ghost_batch=G`` (> 0, needs ``batchnorm=true``) makes those layers ghost batch norm
(:class:`~trainlab.models.norm.GhostBatchNorm1d`; Hoffer et al. 2017, "Train longer, generalize better"): in
training each ``G``-example chunk of the batch is normalised with its own statistics (the remainder forms its
own, smaller ghost batch; the running statistics move once per chunk, in order). 0 (default): statistics of the
whole batch. The state dict keeps BatchNorm's keys.

``dropout=p`` (in [0, 1); default 0: no layer at all) puts an ``nn.Dropout(p)`` (``model.body.drop0``, ...) after
every hidden activation, the placement of Srivastava et al. 2014 ("Dropout: a simple way to prevent neural
networks from overfitting"): each hidden unit's output is zeroed with probability ``p`` in training and the
survivors scaled by ``1/(1 − p)``, so eval mode (no dropout) sees the same expected activations. The inputs are
not dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.models.layers import Activation, activation, scale_parameters_
from trainlab.models.norm import GhostBatchNorm1d, require_batchnorm
from trainlab.models.registry import register
from trainlab.workloads.base import DataSpec


@dataclass
class MLPOptions:
    depth: int = option(2, help="number of hidden layers (0: a linear model)", ge=0, le=1000)
    width: int = option(200, help="units per hidden layer", ge=1)
    activation: Activation = option("relu", help="hidden-layer nonlinearity (identity: a deep linear network)")
    bias: bool = option(True, help="give every Linear layer a bias")
    init_scale: float = option(1.0, help="multiply every parameter by this after PyTorch's default init", gt=0)
    batchnorm: bool = option(False, help="BatchNorm1d after every hidden Linear, before its activation (Shi et al. "
                                         "2021)")
    ghost_batch: int = option(0, help="examples per ghost batch of the BatchNorm statistics in training (Hoffer et "
                                      "al. 2017; needs batchnorm=true; 0: the whole batch)", ge=0)
    dropout: float = option(0.0, help="dropout probability after every hidden activation (0: no dropout layers)",
                            ge=0, lt=1)

    def validate(self) -> None:
        require_batchnorm(self.ghost_batch, self.batchnorm)
        if self.ghost_batch == 1:  # BatchNorm1d over (N, width) would fail at the first training step
            raise ConfigError("ghost_batch", "a ghost batch of 1 example has one value per unit and no batch "
                                             "statistics; use 0 (the whole batch) or at least 2")


class MLP(nn.Module):
    """``Flatten -> [Linear -> (BatchNorm1d) -> activation -> (Dropout)] x depth -> Linear head``.

    ``ghost_batch > 0`` (needs ``batchnorm``) uses :class:`~trainlab.models.norm.GhostBatchNorm1d`; ``dropout > 0``
    adds the ``drop{i}`` layers (module doc).
    """

    def __init__(self, in_features: int, out_features: int, *, depth: int = 2, width: int = 200,
                 activation_name: str = "relu", bias: bool = True, batchnorm: bool = False, ghost_batch: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if ghost_batch and not batchnorm:
            raise ValueError(f"ghost_batch={ghost_batch} needs batchnorm=True")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(start_dim=1))
        d = in_features
        for i in range(depth):
            layers[f"fc{i}"] = nn.Linear(d, width, bias=bias)
            if batchnorm:
                layers[f"bn{i}"] = GhostBatchNorm1d(width, ghost_batch) if ghost_batch else nn.BatchNorm1d(width)
            layers[f"act{i}"] = activation(activation_name)
            if dropout > 0:  # no layer at p = 0: default models keep their exact structure
                layers[f"drop{i}"] = nn.Dropout(dropout)
            d = width
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(d, out_features, bias=bias)

    def features(self, x: Tensor) -> Tensor:
        """The (flattened) representation the head reads: ``(batch, width)``, or the input for depth 0."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register("mlp", options=MLPOptions, input_kinds=("vector", "signal", "image"))
def build_mlp(spec: DataSpec, options: MLPOptions) -> nn.Module:
    """Multi-layer perceptron on flattened inputs (depth hidden layers of width units)."""
    model = MLP(math.prod(spec.input_shape), spec.n_outputs, depth=options.depth, width=options.width,
                activation_name=options.activation, bias=options.bias, batchnorm=options.batchnorm,
                ghost_batch=options.ghost_batch, dropout=options.dropout)
    return scale_parameters_(model, options.init_scale)
