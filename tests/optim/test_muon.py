"""Muon: parity with torch.optim.Muon, the batched step against the per-matrix reference, the auxiliary AdamW
groups, the plain-parameter errors, state_dict round trip, and a few trainer steps on every bundled model."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import _muon as torch_muon

import trainlab
from trainlab import optim
from trainlab.config import ConfigError
from trainlab.optim.muon import Muon, adam_update, muon_update
from trainlab.optim.newton_schulz import COEFFICIENTS


def torch_ns_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton–Schulz with its bfloat16 cast replaced by float32 (otherwise unchanged)."""
    a, b, c = ns_coefficients
    X = grad.float()
    if grad.size(0) > grad.size(1):
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(ns_steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if grad.size(0) > grad.size(1) else X


SHAPES = [(32, 16), (16, 32), (32, 16), (24, 24)]  # two of equal shape: batched together by trainlab


def regression_grads(weights, step):
    """Gradients of a fixed least-squares loss per matrix (so both optimizers see their own trajectory)."""
    gen = torch.Generator().manual_seed(step)
    loss = 0.0
    for w in weights:
        x = torch.randn(8, w.shape[1], generator=gen)
        y = torch.randn(8, w.shape[0], generator=gen)
        loss = loss + ((x @ w.T - y) ** 2).mean()
    return torch.autograd.grad(loss, weights)


def side_by_side(shapes, seed, steps, ours_opts, theirs_opts):
    """Both Muons from the same start on regression_grads for ``steps`` steps: (worst |difference|, largest move)."""
    torch.manual_seed(seed)
    init = [torch.randn(s) * 0.1 for s in shapes]
    ours = [w.clone().requires_grad_() for w in init]
    theirs = [w.clone().requires_grad_() for w in init]
    a, b = Muon(ours, **ours_opts), torch.optim.Muon(theirs, **theirs_opts)
    for step in range(steps):
        for params, opt in ((ours, a), (theirs, b)):
            for p, g in zip(params, regression_grads(params, step)):
                p.grad = g
            opt.step()
    worst = max((p - q).abs().max().item() for p, q in zip(ours, theirs))
    return worst, max((p - w).abs().max().item() for p, w in zip(ours, init))


@pytest.mark.parametrize(("nesterov", "scale"), [(True, "original"), (False, "original"), (True, "match_rms_adamw")])
def test_parity_with_torch_optim_muon_in_float32(monkeypatch, nesterov, scale):
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", torch_ns_float32)
    common = {"lr": 0.02, "momentum": 0.95, "nesterov": nesterov, "weight_decay": 0.1}
    worst, moved = side_by_side(SHAPES, 0, 25, {**common, "ns_dtype": "float32", "scale": scale},
                                {**common, "adjust_lr_fn": scale})
    assert worst < 1e-5  # measured: 0.0 with Nesterov, 2.4e-7 without
    assert moved > 0.1


def test_batched_step_equals_the_per_matrix_reference():
    torch.manual_seed(1)
    shapes = [(12, 8), (12, 8), (6, 3, 3, 3), (6, 27), (8, 12)]  # a conv filter batched with a (6, 27) matrix
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = Muon(params, lr=0.05, weight_decay=0.2, ns_coefficients="tuned", ns_dtype="float32")
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for w, g, buf in zip(ref, grads, bufs):
            update = muon_update(g.clone(), buf, 0.95, True, coefficients="tuned", ns_dtype=torch.float32)
            w.mul_(1 - 0.05 * 0.2).add_(update, alpha=-0.05)
    for p, w in zip(params, ref):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


def test_conv_filters_are_orthogonalised_as_out_by_in_times_kernel():
    g = torch.randn(6, 3, 3, 3)
    update = muon_update(g, torch.zeros_like(g), beta=0.0, nesterov=False, ns_steps=12, coefficients="tuned")
    flat = update.reshape(6, 27)  # scale sqrt(max(1, 6/27)) = 1
    s = torch.linalg.svdvals(flat)
    assert s.shape == (6,) and torch.all((s > 0.95) & (s < 1.05))


def test_auxiliary_adamw_groups_match_torch_adamw():
    torch.manual_seed(2)
    init = [torch.randn(10), torch.randn(4, 5)]
    ours = [w.clone().requires_grad_() for w in init]
    theirs = [w.clone().requires_grad_() for w in init]
    a = Muon([{"params": ours, "use_muon": False}], adam_lr=1e-2, adam_weight_decay=0.1)
    b = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1)
    for _ in range(20):
        grads = [torch.randn_like(w) for w in init]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # The pure function on its own: the first step is sign-like, m̂/sqrt(v̂) = g/|g|.
    g = torch.tensor([2.0, -3.0])
    torch.testing.assert_close(adam_update(g, torch.zeros(2), torch.zeros(2), 1, (0.9, 0.95), 0.0),
                               torch.tensor([1.0, -1.0]))


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_build_from_a_model_gives_muon_and_adamw_groups_with_their_own_lrs():
    model = small_mlp()
    opt = optim.build("muon", model, lr=0.03, adam_lr=1e-3)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert [g["lr"] for g in opt.param_groups] == [0.03, 1e-3]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.03, 1e-3]
    assert opt.param_groups[0]["params"] == [model[0].weight, model[2].weight]
    assert "momentum" not in opt.param_groups[1] and opt.param_groups[1]["betas"] == (0.9, 0.95)
    # The trainer scales every group by the schedule's multiplier; a checkpoint keeps the base lrs.
    for group, base in zip(opt.param_groups, [0.03, 1e-3]):
        group["lr"] = base * 0.5
    again = optim.build("muon", small_mlp(), lr=0.03, adam_lr=1e-3)
    again.load_state_dict(opt.state_dict())
    assert [g.get("initial_lr", g["lr"]) for g in again.param_groups] == [0.03, 1e-3]
    excluded = optim.build("muon", model, muon_exclude=r"^2\.")
    assert excluded.param_groups[0]["params"] == [model[0].weight]


def test_plain_parameters_must_be_matrices():
    with pytest.raises(ConfigError, match=r"muon: parameter 1 of group 0 has shape \(4,\).*matrices only"):
        Muon([torch.zeros(4, 4, requires_grad=True), torch.zeros(4, requires_grad=True)])
    with pytest.raises(ConfigError, match=r"^optimizer: muon: parameter 1 .*Pass the model itself"):
        optim.build("muon", list(small_mlp().parameters()))
    with pytest.raises(ConfigError, match="needs the model"):
        optim.build("muon", [torch.zeros(3, 3, requires_grad=True)], muon_exclude="x")
    with pytest.raises(ConfigError, match="optimizer.muon_exclude: not a regular expression"):
        optim.build("muon", small_mlp(), muon_exclude="(")
    with pytest.raises(ConfigError, match="optimizer.ns_coefficients"):
        optim.build("muon", small_mlp(), ns_coefficients="cubic")
    assert set(COEFFICIENTS) == {"quintic", "tuned", "you", "polar_express"}


def test_state_dict_round_trip_continues_identically():
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def steps(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    model = small_mlp()
    opt = optim.build("muon", model, weight_decay=0.01, adam_weight_decay=0.01)
    steps(model, opt, 3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict() shares the live buffers
    steps(model, opt, 3)

    clone = small_mlp()
    clone.load_state_dict(saved_model)
    opt2 = optim.build("muon", clone, weight_decay=0.01, adam_weight_decay=0.01)
    opt2.load_state_dict(saved_opt)
    steps(clone, opt2, 3)
    for (name, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------------------
# Through the trainer on every bundled model


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_fake_mnist(root, n_train=40, n_test=20):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


RUNS = {
    "mlp": ["workload.p=23", "model.width=32", "steps=20", "eval_every=10", "optimizer.adam_lr=1e-2"],
    "transformer": ["workload.p=23", "model=transformer", "model.n_layer=1", "model.d_model=32", "steps=6",
                    "eval_every=3"],
    "cnn1d": ["workload=mnist1d", "workload.num_samples=100", "workload.cache=false", "model.channels=8",
              "batch_size=40", "steps=6", "eval_every=3"],
    "cnn2d": ["workload=mnist", "model=cnn2d", "model.channels=4", "model.depth=2", "batch_size=20", "steps=6",
              "eval_every=3"],
}


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "cnn1d" else m for m in RUNS])
def test_trains_every_bundled_model(tmp_path, model):  # cnn1d: importing the mnist1d generator takes ~4 s
    overrides = ["optimizer=muon", *RUNS[model]]
    if model == "cnn2d":
        write_fake_mnist(tmp_path / "data")
        overrides.append(f"workload.root={tmp_path / 'data'}")
    metrics = rows(trainlab.run(None, overrides, out=tmp_path / "run", quiet=True, report=False))
    assert all(np.isfinite(r["train_loss"]) for r in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[0]["lr"] == 0.02  # the Muon group comes first: the logged lr is Muon's


# ---------------------------------------------------------------------------------------------------------
# ns_dtype="auto": chosen by the machine's capability (trainlab.optim.hardware), recorded in the summary


def observed_ns_dtypes(monkeypatch, fast_bf16, ns_dtype="auto", dtype=torch.float32):
    """The dtypes one CPU Muon step asks Newton–Schulz for, with the CPU's bf16 capability patched."""
    import trainlab.optim.muon as muon_module

    monkeypatch.setattr(muon_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    seen, real = [], muon_module.orthogonalize

    def spy(G, coefficients, steps, dtype=None, *args, **kwargs):
        seen.append(dtype)
        return real(G, coefficients, steps, dtype, *args, **kwargs)

    monkeypatch.setattr(muon_module, "orthogonalize", spy)
    model = small_mlp().to(dtype)
    opt = optim.build("muon", model, ns_dtype=ns_dtype)
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(torch.randn(16, 6, dtype=dtype)), torch.randint(0, 3, (16,))).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert seen, "the step did not orthogonalise anything"
    return set(seen), opt


@pytest.mark.parametrize("fast, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_runs_newton_schulz_in_bf16_exactly_on_a_cpu_with_fast_bf16(monkeypatch, fast, expected):
    seen, opt = observed_ns_dtypes(monkeypatch, fast)
    assert seen == {expected}
    assert opt.resolved_options() == {"ns_dtype": str(expected).removeprefix("torch.")}


@pytest.mark.parametrize("fast", [True, False])
def test_explicit_ns_dtype_and_float64_ignore_the_capability(monkeypatch, fast):
    assert observed_ns_dtypes(monkeypatch, fast, ns_dtype="float32")[0] == {torch.float32}
    assert observed_ns_dtypes(monkeypatch, fast, ns_dtype="bfloat16")[0] == {torch.bfloat16}
    seen, opt = observed_ns_dtypes(monkeypatch, fast, dtype=torch.float64)  # float64 runs keep float64 numerics
    assert seen == {torch.float64} and opt.resolved_options() == {"ns_dtype": "float64"}


def test_resolved_options_is_empty_without_muon_matrices():
    opt = Muon([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": False}])
    assert opt.resolved_options() == {}


@pytest.mark.parametrize("fast, expected", [(True, "bfloat16"), (False, "float32")])
def test_summary_records_what_auto_resolved_to(monkeypatch, tmp_path, fast, expected):
    import trainlab.optim.muon as muon_module

    monkeypatch.setattr(muon_module, "cpu_has_fast_bf16", lambda: fast)
    run_dir = trainlab.run(None, ["optimizer=muon", "workload.p=11", "model.width=16", "steps=2", "eval_every=1"],
                           out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["optimizer"] == "muon"
    assert summary["optimizer_resolved"] == {"ns_dtype": expected}


def test_summary_has_no_resolved_options_for_an_optimizer_without_them(tmp_path):
    run_dir = trainlab.run(None, ["optimizer=adamw", "workload.p=11", "model.width=16", "steps=2", "eval_every=1"],
                           out=tmp_path / "run", quiet=True, report=False)
    assert "optimizer_resolved" not in json.loads((run_dir / "summary.json").read_text())


def test_bf16_step_matches_torch_optim_muon():
    """Unpatched torch.optim.Muon iterates in bf16 too; one matrix per shape, so trainlab's stack is of one."""
    worst, moved = side_by_side([(32, 16), (16, 32), (24, 24)], 3, 10,
                                {"lr": 0.02, "weight_decay": 0.1, "ns_dtype": "bfloat16"},
                                {"lr": 0.02, "weight_decay": 0.1})
    assert worst < 1e-5, worst  # measured 0.0 on AMD EPYC (bf16 kernels may round differently elsewhere)
    assert moved > 0.1


def test_steps_reuse_the_newton_schulz_buffers_on_cpu():
    params = [torch.randn(s, requires_grad=True) for s in [(12, 8), (12, 8), (8, 12)]]
    opt = Muon(params, lr=0.02, ns_dtype="bfloat16")
    nbytes = []
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        nbytes.append(opt._ns_workspace.nbytes)
    assert nbytes[0] > 0 and nbytes == [nbytes[0]] * 3
