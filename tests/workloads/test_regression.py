"""Tests of the regression workloads: ``deep_linear`` (Saxe et al. 2014) and ``teacher_student``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainlab.config import ConfigError
from trainlab.workloads import build
from trainlab.workloads.regression import saxe_loss_curve, saxe_mode_strength


def test_teacher_and_whitened_inputs() -> None:
    wl = build("deep_linear", d_in=8, d_out=6, singular_values=(2.0, 1.0), n_train=20, n_val=30, seed=3)
    u, s, v = wl.teacher()
    assert u.shape == (6, 2) and v.shape == (8, 2) and torch.equal(s, torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert torch.allclose(u.T @ u, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(v.T @ v, torch.eye(2, dtype=torch.float64), atol=1e-12)
    d = wl.data("vector")
    assert d.x_train.shape == (20, 8) and d.y_train.shape == (20, 6) and d.x_val.shape == (30, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.float32
    x = d.x_train.double()
    assert torch.allclose(x.T @ x / 20, torch.eye(8, dtype=torch.float64), atol=1e-5)
    m = wl.teacher_matrix()
    assert torch.allclose(d.y_train.double(), x @ m.T, atol=1e-5)
    assert torch.allclose(d.y_val.double(), d.x_val.double() @ m.T, atol=1e-5)
    assert torch.allclose(torch.linalg.svdvals(m)[:2], s, atol=1e-12)
    spec = wl.spec("vector")
    assert spec.input_shape == (8,) and spec.n_outputs == 6 and spec.task == "regression"
    # the training loss of the linear map W is 0.5·||M - W||_F² (whitened inputs)
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = wl.loss(d.x_train.double() @ w.T, d.y_train).mean()
    assert math.isclose(float(loss), 0.5 * float(((m - w) ** 2).sum()), rel_tol=1e-5)


def test_saxe_functions() -> None:
    assert np.isclose(saxe_mode_strength(3.0, 0.01, 0.0), 0.01)
    assert np.isclose(saxe_mode_strength(3.0, 0.01, 100.0), 3.0)  # no overflow, converges to s
    t = np.linspace(0, 3, 301)
    a = saxe_mode_strength(2.0, 0.05, t)
    da = np.gradient(a, t)
    assert np.allclose(da[5:-5], (2 * a * (2.0 - a))[5:-5], rtol=1e-3)  # da/dt = 2a(s - a)
    curve = saxe_loss_curve((3.0, 1.0), 0.01, 0.1, 50)
    assert curve.shape == (51,) and np.isclose(curve[0], 0.5 * (2.99**2 + 0.99**2))
    assert np.all(np.diff(curve) <= 1e-12)
    with pytest.raises(ValueError):
        saxe_mode_strength(1.0, 0.0, 1.0)


def test_two_layer_linear_net_follows_saxe_curve() -> None:
    """Full-batch gradient descent on a 2-layer linear net from a balanced decoupled initial condition."""
    wl = build("deep_linear")  # d_in = d_out = 16, s = (3, 2, 1, 0.5), 64 whitened training examples
    u, s, v = (t.float() for t in wl.teacher())
    d = wl.data("vector")
    a0, lr, steps, hidden = 0.01, 0.01, 700, 16
    first = torch.nn.Linear(16, hidden, bias=False)
    second = torch.nn.Linear(hidden, 16, bias=False)
    r = torch.eye(hidden)[:, : len(s)]  # orthonormal hidden directions, one per teacher mode
    with torch.no_grad():
        first.weight.copy_(math.sqrt(a0) * r @ v.T)  # W2 W1 = a0 U Vᵀ, both layers balanced
        second.weight.copy_(math.sqrt(a0) * u @ r.T)
    params = [first.weight, second.weight]
    losses = []
    for _ in range(steps + 1):
        loss = wl.loss(second(first(d.x_train)), d.y_train).mean()
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    expected = saxe_loss_curve(s.tolist(), a0, lr, steps)
    losses_arr = np.array(losses)
    assert abs(losses_arr[0] - expected[0]) < 1e-4 * expected[0]
    assert np.max(np.abs(losses_arr - expected)) < 0.02 * expected[0]
    assert losses_arr[-1] < 1e-3  # all four sigmoids have happened


def test_deep_linear_validation_and_defaults() -> None:
    with pytest.raises(ConfigError, match="n_train"):
        build("deep_linear", n_train=8)
    with pytest.raises(ConfigError, match="singular_values"):
        build("deep_linear", d_in=2, singular_values=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="singular_values"):
        build("deep_linear", singular_values=(1.0, -2.0))
    wl = build("deep_linear", singular_values="3, 1")  # command-line style
    assert wl.options.singular_values == (3.0, 1.0)
    wl = build("deep_linear")
    o = wl.options
    assert (o.d_in, o.d_out, o.singular_values, o.n_train, o.n_val) == (16, 16, (3.0, 2.0, 1.0, 0.5), 64, 256)
    assert wl.metric == "mse" and not wl.higher_is_better and wl.threshold == 1e-3
    assert wl.default_batch_size == 0 and wl.default_steps == 2000 and wl.default_eval_every == 20
    assert wl.default_model == (
        "mlp", {"depth": 1, "width": 16, "activation": "identity", "bias": False, "init_scale": 0.01}
    )
    a, b = build("deep_linear", seed=1).data("vector"), build("deep_linear", seed=1).data("vector")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.y_train, build("deep_linear", seed=2).data("vector").y_train)


def test_teacher_student() -> None:
    wl = build("teacher_student", d_in=5, d_out=2, n_train=400, n_val=100, seed=4)
    d = wl.data("vector")
    assert d.x_train.shape == (400, 5) and d.y_train.shape == (400, 2) and d.y_val.shape == (100, 2)
    assert torch.allclose(d.y_train.mean(0), torch.zeros(2), atol=1e-5)  # standardised with train statistics
    assert torch.allclose(d.y_train.std(0), torch.ones(2), atol=1e-5)
    raw = wl.teacher_forward(d.x_val)  # validation targets are the same affine map of the teacher's output
    ratio = (d.y_val.double() - d.y_val.double().mean(0)) / (raw - raw.mean(0))
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)
    assert d.y_train.std(0).min() > 0 and torch.isfinite(d.y_train).all()
    noisy = build("teacher_student", d_in=5, d_out=2, n_train=400, n_val=100, seed=4, noise=0.5).data("vector")
    assert torch.equal(noisy.x_train, d.x_train) and torch.equal(noisy.y_val, d.y_val)  # noise on train only
    assert 0.3 < float((noisy.y_train - d.y_train).std()) < 0.7
    assert not torch.equal(build("teacher_student", seed=5).data("vector").x_train,
                           build("teacher_student", seed=6).data("vector").x_train)  # fmt: skip
    spec = wl.spec("vector")
    assert spec.input_shape == (5,) and spec.n_outputs == 2 and spec.task == "regression"
    out = torch.zeros_like(d.y_val)
    assert torch.allclose(wl.loss(out, d.y_val), 0.5 * d.y_val.pow(2).sum(-1))
    w = build("teacher_student")
    o = w.options
    assert (o.d_in, o.d_out, o.teacher_width, o.teacher_depth, o.teacher_activation) == (32, 1, 64, 2, "tanh")
    assert (o.n_train, o.n_val, o.noise) == (1000, 1000, 0.0)
    assert w.threshold == 0.05 and w.default_batch_size == 64 and w.default_steps == 2000
    assert w.default_eval_every == 100
    assert w.default_model == ("mlp", {"depth": 2, "width": 128, "activation": "tanh"})
    with pytest.raises(ConfigError, match="teacher_activation"):
        build("teacher_student", teacher_activation="sigmoid")
