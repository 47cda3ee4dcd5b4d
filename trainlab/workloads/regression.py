"""Regression workloads: ``deep_linear`` (a linear teacher) and ``teacher_student`` (a random MLP teacher).

Both use the loss ``0.5·||y - ŷ||²`` per example (summed over output dimensions, averaged over examples by the
trainer) and report the mean squared error per output dimension (``mse``, lower is better).

``deep_linear`` is the setting of Saxe, McClelland & Ganguli (2014), "Exact solutions to the nonlinear
dynamics of learning in deep linear neural networks" (ICLR 2014, arXiv:1312.6120). The teacher is
``M = U diag(s) Vᵀ`` (``d_out × d_in``) with random orthonormal ``U`` and ``V`` (``r = len(s)`` columns each)
drawn with ``seed``; targets are ``y = M x``. Training inputs are exactly whitened (``XᵀX / n_train = I``,
which needs ``n_train >= d_in``), so the training loss of a linear model ``W`` is ``0.5·||M - W||²_F`` and a
two-layer linear net started from small, balanced, decoupled weights learns each mode ``i`` along the sigmoid

    a_i(t) = s_i e^{2 s_i t} / (e^{2 s_i t} - 1 + s_i / a0),    t = lr · steps,

(:func:`saxe_mode_strength`; time in units of the learning rate, i.e. ``τ = 1/lr`` in the paper's notation,
both layers learning), giving the training loss ``0.5·Σ_i (s_i - a_i(t))²`` (:func:`saxe_loss_curve`).
Validation inputs are standard normal. Defaults: ``d_in = d_out = 16``, ``s = (3, 2, 1, 0.5)``, 64 training
and 256 validation examples, full batch, 2000 steps, a bias-free linear MLP with one hidden layer of width 16
and initial scale 0.01; threshold mse 1e-3.

``teacher_student``: the teacher-student setting of statistical learning theory (e.g. Saad & Solla 1995,
"On-line learning in soft committee machines", Phys. Rev. E 52). Inputs ``x ~ N(0, I_{d_in})``; the teacher
is a random MLP (``teacher_depth`` hidden layers of width ``teacher_width``, weights ``N(0, 1/fan_in)``,
biases ``N(0, 0.1²)``, activation ``teacher_activation``); targets are its outputs standardised (per output
dimension) with the mean and standard deviation of the training targets. With ``noise > 0``, Gaussian noise
of that standard deviation (in standardised units) is added to the training targets only, so the validation
mse measures the distance to the teacher. Defaults: ``d_in=32``, ``d_out=1``, width 64, depth 2, tanh,
1000 + 1000 examples, batch 64, 2000 steps, a tanh MLP of depth 2 and width 128; threshold mse 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from trainlab.config import ConfigError, option, seed_option
from trainlab.workloads.base import Dataset, DataSpec, InputKind, RegressionWorkload
from trainlab.workloads.registry import register


# ---------------------------------------------------------------------------------------------------------
# Saxe et al. (2014): analytic learning curves of a two-layer linear network
# ---------------------------------------------------------------------------------------------------------
def saxe_mode_strength(s: float | np.ndarray, a0: float | np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Mode strength ``a(t) = s e^{2st} / (e^{2st} - 1 + s/a0)`` of a two-layer linear net under gradient flow.

    ``s``: the teacher's singular value (> 0); ``a0``: the initial strength of the mode (> 0, both layers
    balanced); ``t``: time in units of ``lr · steps``. Broadcasts over numpy arrays. Computed in the overflow-
    free form ``s / (1 + (s/a0 - 1) e^{-2st})``.
    """
    s = np.asarray(s, dtype=np.float64)
    a0 = np.asarray(a0, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if np.any(s <= 0) or np.any(a0 <= 0):
        raise ValueError("saxe_mode_strength: s and a0 must be > 0")
    return s / (1.0 + (s / a0 - 1.0) * np.exp(-2.0 * s * t))


def saxe_loss_curve(singular_values: Sequence[float], a0: float | Sequence[float], lr: float, steps: int) -> np.ndarray:
    """Analytic training loss ``0.5·Σ_i (s_i - a_i(t))²`` after ``0, 1, ..., steps`` steps (``steps + 1`` values).

    For whitened inputs, a two-layer linear net with balanced decoupled initial modes of strength ``a0`` (a
    number or one per singular value), trained by gradient descent with learning rate ``lr`` on the mean over
    examples of ``0.5·||y - ŷ||²``; gradient flow approximates it for small ``lr``. Index ``k`` is ``t = lr·k``.
    """
    s = np.asarray(singular_values, dtype=np.float64).reshape(-1, 1)
    a0_arr = np.broadcast_to(np.asarray(a0, dtype=np.float64).reshape(-1, 1), s.shape)
    t = lr * np.arange(steps + 1, dtype=np.float64).reshape(1, -1)
    a = saxe_mode_strength(s, a0_arr, t)
    return 0.5 * ((s - a) ** 2).sum(0)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    """A ``rows × cols`` matrix with orthonormal columns (Haar-distributed), float64."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------
# deep_linear
# ---------------------------------------------------------------------------------------------------------
@dataclass
class DeepLinearOptions:
    d_in: int = option(16, help="input dimension", ge=1)
    d_out: int = option(16, help="output dimension", ge=1)
    singular_values: tuple[float, ...] = option(
        (3.0, 2.0, 1.0, 0.5), help="the teacher's singular values (> 0), at most min(d_in, d_out) of them"
    )
    n_train: int = option(64, help="training examples (exactly whitened, so at least d_in)", ge=1)
    n_val: int = option(256, help="validation examples (standard normal inputs)", ge=1)
    seed: int = seed_option(help="seed of the teacher's singular vectors and of the inputs")

    def validate(self) -> None:
        r = len(self.singular_values)
        if r == 0:
            raise ConfigError("singular_values", "needs at least one value")
        if r > min(self.d_in, self.d_out):
            raise ConfigError(
                "singular_values", f"at most min(d_in, d_out)={min(self.d_in, self.d_out)} values, got {r}"
            )
        if any(not (v > 0 and math.isfinite(v)) for v in self.singular_values):
            raise ConfigError("singular_values", f"must all be finite and > 0, got {self.singular_values}")
        if self.n_train < self.d_in:
            raise ConfigError("n_train", f"must be >= d_in={self.d_in} for exactly whitened inputs, got {self.n_train}")


@register("deep_linear", options=DeepLinearOptions, paper="Saxe, McClelland & Ganguli 2014, arXiv:1312.6120")
class DeepLinearWorkload(RegressionWorkload):
    """Linear teacher U diag(s) Vᵀ with whitened inputs (Saxe et al. 2014)."""

    threshold = 1e-3
    default_steps = 2000
    default_eval_every = 20
    default_batch_size = 0
    default_model = (
        "mlp", {"depth": 1, "width": 16, "activation": "identity", "bias": False, "init_scale": 0.01}
    )
    input_kinds = ("vector",)

    options: DeepLinearOptions

    def __init__(self, options: DeepLinearOptions) -> None:
        super().__init__(options)
        options.validate()
        self._teacher: tuple[Tensor, Tensor, Tensor] | None = None
        self._data: Dataset | None = None

    def teacher(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, S, V)`` in float64: ``U`` (``d_out × r``), the ``r`` singular values ``S``, ``V`` (``d_in × r``)."""
        if self._teacher is None:
            self._generate()
        assert self._teacher is not None
        return self._teacher

    def teacher_matrix(self) -> Tensor:
        """``M = U diag(S) Vᵀ`` (``d_out × d_in``, float64)."""
        u, s, v = self.teacher()
        return (u * s) @ v.T

    def _generate(self) -> None:
        o = self.options
        gen = torch.Generator().manual_seed(o.seed)
        r = len(o.singular_values)
        u = _orthonormal(o.d_out, r, gen)
        v = _orthonormal(o.d_in, r, gen)
        s = torch.tensor(o.singular_values, dtype=torch.float64)
        m = (u * s) @ v.T
        x_train = _orthonormal(o.n_train, o.d_in, gen) * math.sqrt(o.n_train)  # XᵀX / n = I
        x_val = torch.randn(o.n_val, o.d_in, generator=gen, dtype=torch.float64)
        self._teacher = (u, s, v)
        self._data = Dataset(
            x_train.float(), (x_train @ m.T).float(), x_val.float(), (x_val @ m.T).float()
        )

    def spec(self, kind: InputKind) -> DataSpec:
        self.check_kind(kind)
        return DataSpec("vector", (self.options.d_in,), self.options.d_out, "regression")

    def data(self, kind: InputKind) -> Dataset:
        self.check_kind(kind)
        if self._data is None:
            self._generate()
        assert self._data is not None
        return self._data


# ---------------------------------------------------------------------------------------------------------
# teacher_student
# ---------------------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
    "identity": lambda z: z,
}


@dataclass
class TeacherStudentOptions:
    d_in: int = option(32, help="input dimension", ge=1)
    d_out: int = option(1, help="output dimension", ge=1)
    teacher_width: int = option(64, help="hidden width of the teacher MLP", ge=1)
    teacher_depth: int = option(2, help="hidden layers of the teacher MLP (0 = linear teacher)", ge=0)
    teacher_activation: Literal["tanh", "relu", "gelu", "silu", "identity"] = option(
        "tanh", help="the teacher's activation"
    )
    n_train: int = option(1000, help="training examples", ge=2)
    n_val: int = option(1000, help="validation examples", ge=1)
    noise: float = option(0.0, help="std of Gaussian noise added to the standardised training targets", ge=0)
    seed: int = seed_option(help="seed of the teacher, the inputs and the noise")


@register("teacher_student", options=TeacherStudentOptions)
class TeacherStudentWorkload(RegressionWorkload):
    """Regression onto a random MLP teacher, targets standardised with training statistics."""

    threshold = 0.05
    default_steps = 2000
    default_eval_every = 100
    default_batch_size = 64
    default_model = ("mlp", {"depth": 2, "width": 128, "activation": "tanh"})
    input_kinds = ("vector",)

    options: TeacherStudentOptions

    def __init__(self, options: TeacherStudentOptions) -> None:
        super().__init__(options)
        self._data: Dataset | None = None
        self._layers: list[tuple[Tensor, Tensor]] | None = None

    def teacher_layers(self) -> list[tuple[Tensor, Tensor]]:
        """The teacher's ``(weight, bias)`` pairs (float64, weight ``fan_out × fan_in``)."""
        if self._layers is None:
            self._generate()
        assert self._layers is not None
        return self._layers

    def teacher_forward(self, x: Tensor) -> Tensor:
        """The teacher's raw (unstandardised) output for inputs ``x``, float64."""
        act = _ACTIVATIONS[self.options.teacher_activation]
        h = x.to(torch.float64)
        layers = self.teacher_layers()
        for i, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if i < len(layers) - 1:
                h = act(h)
        return h

    def _generate(self) -> None:
        o = self.options
        gen = torch.Generator().manual_seed(o.seed)
        dims = [o.d_in] + [o.teacher_width] * o.teacher_depth + [o.d_out]
        layers = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            w = torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
            b = 0.1 * torch.randn(fan_out, generator=gen, dtype=torch.float64)
            layers.append((w, b))
        self._layers = layers
        x_train = torch.randn(o.n_train, o.d_in, generator=gen, dtype=torch.float64)
        x_val = torch.randn(o.n_val, o.d_in, generator=gen, dtype=torch.float64)
        y_train, y_val = self.teacher_forward(x_train), self.teacher_forward(x_val)
        mean, std = y_train.mean(0), y_train.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        y_train, y_val = (y_train - mean) / std, (y_val - mean) / std
        if o.noise > 0:
            y_train = y_train + o.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
        self._data = Dataset(x_train.float(), y_train.float(), x_val.float(), y_val.float())

    def spec(self, kind: InputKind) -> DataSpec:
        self.check_kind(kind)
        return DataSpec("vector", (self.options.d_in,), self.options.d_out, "regression")

    def data(self, kind: InputKind) -> Dataset:
        self.check_kind(kind)
        if self._data is None:
            self._generate()
        assert self._data is not None
        return self._data
