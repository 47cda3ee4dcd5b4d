"""Convolutional networks for 1-D signals (``cnn1d``) and images (``cnn2d``).

Both are a stack of ``depth`` stages ``Conv (padding "same") -> activation -> MaxPool(2)``, a global average
pool over the remaining positions, and a linear ``head``. By default there is no normalisation layer, so
per-example gradients and the function's dependence on its weights stay simple; ``batchnorm=true`` puts a
``BatchNorm1d``/``BatchNorm2d`` (``model.body.bn0``, ...) after every convolution, before its activation -- "BN in
every layer" of Shi et al. 2021, "Fast Certified Robust Training with Short Warmup" (off: the structure, state
dict and outputs of existing runs are unchanged).

``ghost_batch=G`` (> 0, needs ``batchnorm=true``) makes those layers ghost batch norm (:mod:`trainlab.models.norm`;
Hoffer et al. 2017, "Train longer, generalize better"): in training each ``G``-example chunk of the batch is
normalised with its own statistics (the remainder forms its own, smaller ghost batch; running statistics move once
per chunk, in order); 0 (default): the whole batch.

``dropout=p`` (in [0, 1); default 0: no layer at all) ends every stage with an ``nn.Dropout(p)``
(``model.body.drop0``, ...) *after* its max pool, so the stage's output units are dropped (Srivastava et al. 2014,
"Dropout: a simple way to prevent neural networks from overfitting", apply dropout to convolutional layers too).
Dropping before the pool instead would change which unit each window's max selects (Wu & Gu 2015's "max-pooling
dropout", a different regulariser) and draw about 2^dims times more mask values. Survivors are scaled by
``1/(1 − p)`` in training; eval mode has no dropout.

``cnn1d`` (defaults: 32 channels in every stage, depth 3, kernel 5; about 11k parameters for MNIST-1D) is
sized after the small CNN of Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (ICML 2024), which
reaches about 94% test accuracy on MNIST-1D. It reads ``(batch, length)`` or ``(batch, channels, length)``.

``cnn2d`` (defaults: 32 channels doubling every stage, depth 3, kernel 3; about 94k parameters for
32x32x3 inputs) reads ``(batch, channels, height, width)`` images, e.g. 28x28x1 or 32x32x3.

Pooling uses ``ceil_mode`` so odd sizes keep their last row and a size of 1 stays 1 (deep stacks on short
inputs do not fail). ``init_scale`` multiplies every parameter after PyTorch's default initialisation.
Stages are named ``model.body.conv0``, (``bn0``,) ``act0``, ``pool0``, (``drop0``,) ...; ``model.head`` is the last
layer and ``model.features(x)`` the pooled representation it reads.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from trainlab.config import option
from trainlab.models.layers import Activation, activation, scale_parameters_
from trainlab.models.norm import GhostBatchNorm1d, GhostBatchNorm2d, require_batchnorm
from trainlab.models.registry import register
from trainlab.workloads.base import DataSpec


@dataclass
class CNN1dOptions:
    channels: int = option(32, help="channels of every convolutional stage", ge=1)
    depth: int = option(3, help="number of conv -> activation -> maxpool(2) stages", ge=1)
    kernel_size: int = option(5, help="convolution kernel length (padding keeps the length)", ge=1)
    activation: Activation = option("relu", help="nonlinearity after each convolution")
    init_scale: float = option(1.0, help="multiply every parameter by this after PyTorch's default init", gt=0)
    batchnorm: bool = option(False, help="BatchNorm after every convolution, before its activation (Shi et al. 2021)")
    ghost_batch: int = option(0, help="examples per ghost batch of the BatchNorm statistics in training (Hoffer et "
                                      "al. 2017; needs batchnorm=true; 0: the whole batch)", ge=0)
    dropout: float = option(0.0, help="dropout probability on every stage's output, after its max pool (0: no "
                                      "dropout layers)", ge=0, lt=1)

    def validate(self) -> None:
        require_batchnorm(self.ghost_batch, self.batchnorm)


@dataclass
class CNN2dOptions:
    channels: int = option(32, help="channels of the first stage; each later stage doubles them", ge=1)
    depth: int = option(3, help="number of conv -> activation -> maxpool(2) stages", ge=1)
    kernel_size: int = option(3, help="convolution kernel size (padding keeps the size)", ge=1)
    activation: Activation = option("relu", help="nonlinearity after each convolution")
    init_scale: float = option(1.0, help="multiply every parameter by this after PyTorch's default init", gt=0)
    batchnorm: bool = option(False, help="BatchNorm after every convolution, before its activation (Shi et al. 2021)")
    ghost_batch: int = option(0, help="examples per ghost batch of the BatchNorm statistics in training (Hoffer et "
                                      "al. 2017; needs batchnorm=true; 0: the whole batch)", ge=0)
    dropout: float = option(0.0, help="dropout probability on every stage's output, after its max pool (0: no "
                                      "dropout layers)", ge=0, lt=1)

    def validate(self) -> None:
        require_batchnorm(self.ghost_batch, self.batchnorm)


class ConvNet(nn.Module):
    """``[Conv -> (BatchNorm) -> activation -> MaxPool(2) -> (Dropout)] x depth -> global average pool -> Linear
    head`` in 1 or 2 dims.

    ``widths`` are the output channels of the stages; ``ghost_batch > 0`` (needs ``batchnorm``) uses ghost batch
    norm, ``dropout > 0`` adds the ``drop{i}`` layers (module doc).
    """

    def __init__(self, dims: int, in_channels: int, out_features: int, widths: list[int], kernel_size: int,
                 activation_name: str = "relu", batchnorm: bool = False, ghost_batch: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        if ghost_batch and not batchnorm:
            raise ValueError(f"ghost_batch={ghost_batch} needs batchnorm=True")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dims = dims
        conv, norm, ghost, pool = ((nn.Conv1d, nn.BatchNorm1d, GhostBatchNorm1d, nn.MaxPool1d) if dims == 1
                                   else (nn.Conv2d, nn.BatchNorm2d, GhostBatchNorm2d, nn.MaxPool2d))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_channels
        for i, width in enumerate(widths):
            layers[f"conv{i}"] = conv(c, width, kernel_size, padding="same")
            if batchnorm:
                layers[f"bn{i}"] = ghost(width, ghost_batch) if ghost_batch else norm(width)
            layers[f"act{i}"] = activation(activation_name)
            layers[f"pool{i}"] = pool(2, ceil_mode=True)
            if dropout > 0:  # no layer at p = 0: default models keep their exact structure
                layers[f"drop{i}"] = nn.Dropout(dropout)
            c = width
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(c, out_features)

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features of the last stage: ``(batch, channels)``."""
        if x.dim() == self.dims + 1:  # no channel axis: a single-channel signal or image
            x = x.unsqueeze(1)
        h = self.body(x)
        return h.mean(dim=tuple(range(2, h.dim())))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register("cnn1d", options=CNN1dOptions, input_kinds=("signal",))
def build_cnn1d(spec: DataSpec, options: CNN1dOptions) -> nn.Module:
    """1-D CNN for signals: conv/maxpool stages, global average pool, linear head (MNIST-1D sized)."""
    in_channels = spec.input_shape[0] if len(spec.input_shape) == 2 else 1
    model = ConvNet(1, in_channels, spec.n_outputs, [options.channels] * options.depth, options.kernel_size,
                    options.activation, batchnorm=options.batchnorm, ghost_batch=options.ghost_batch,
                    dropout=options.dropout)
    return scale_parameters_(model, options.init_scale)


@register("cnn2d", options=CNN2dOptions, input_kinds=("image",))
def build_cnn2d(spec: DataSpec, options: CNN2dOptions) -> nn.Module:
    """2-D CNN for images: conv/maxpool stages with doubling channels, global average pool, linear head."""
    in_channels = spec.input_shape[0] if len(spec.input_shape) == 3 else 1
    widths = [options.channels * 2**i for i in range(options.depth)]
    model = ConvNet(2, in_channels, spec.n_outputs, widths, options.kernel_size, options.activation,
                    batchnorm=options.batchnorm, ghost_batch=options.ghost_batch, dropout=options.dropout)
    return scale_parameters_(model, options.init_scale)
