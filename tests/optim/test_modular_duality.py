"""Modular dualisation: the norms each duality map produces, the mass/sensitivity split of the target norm,
the batched step against the per-tensor maps, and training through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import trainlab
from trainlab import optim
from trainlab.models import build as build_model
from trainlab.optim.modular_duality import (
    Dualized,
    atoms,
    dualize,
    dualize_conv,
    dualize_embedding,
    dualize_linear,
    dualize_vector,
    param_groups,
    target_norms,
)
from trainlab.workloads.base import DataSpec

GEN = torch.Generator().manual_seed(0)


def spectral(m: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(m.double(), ord=2).item()


@pytest.mark.parametrize("shape", [(24, 12), (12, 24), (16, 16)])
def test_linear_dual_map_has_spectral_norm_target_times_sqrt_fan_ratio(shape):
    G = torch.randn(shape, generator=GEN)
    out_f, in_f = shape
    want = 0.3 * math.sqrt(out_f / in_f)
    exact = dualize_linear(G, 0.3, exact=True)
    assert spectral(exact) == pytest.approx(want, rel=1e-6)
    s = torch.linalg.svdvals(exact.double())
    assert torch.allclose(s, torch.full_like(s, want), rtol=1e-6)  # every direction at the target
    approx = dualize_linear(G, 0.3, coefficients="you", steps=6, dtype=torch.float32)
    assert spectral(approx) == pytest.approx(want, rel=0.01)  # Newton–Schulz: within the "you" band
    quintic = dualize_linear(G, 0.3)
    assert 0.6 * want < spectral(quintic) < 1.2 * want


def test_embedding_rows_have_norm_sqrt_d_times_target_and_empty_rows_stay_zero():
    G = torch.randn(10, 8, generator=GEN)
    G[3] = 0.0  # a token absent from the batch
    D = dualize_embedding(G, 0.5)
    norms = torch.linalg.vector_norm(D, dim=1)
    expected = torch.full((10,), 0.5 * math.sqrt(8))
    expected[3] = 0.0
    torch.testing.assert_close(norms, expected)
    assert torch.isfinite(D).all()
    torch.testing.assert_close(D[0] / D[0].norm(), G[0] / G[0].norm())  # direction kept per row


def test_conv_dual_map_per_kernel_position_scaled_by_one_over_positions():
    G = torch.randn(8, 4, 3, 3, generator=GEN)
    D = dualize_conv(G, 1.0, exact=True)
    for i in range(3):
        for j in range(3):
            assert spectral(D[:, :, i, j]) == pytest.approx(math.sqrt(8 / 4) / 9, rel=1e-6)
    D1 = dualize_conv(torch.randn(6, 6, 5, generator=GEN), 2.0, exact=True)  # Conv1d: 1/k
    assert spectral(D1[:, :, 2]) == pytest.approx(2.0 / 5, rel=1e-6)


def test_vector_dual_map_has_rms_target_and_zero_stays_zero():
    g = torch.randn(50, generator=GEN)
    v = dualize_vector(g, 0.2)
    assert v.pow(2).mean().sqrt().item() == pytest.approx(0.2, rel=1e-5)
    assert torch.equal(dualize_vector(torch.zeros(5), 1.0), torch.zeros(5))
    with pytest.raises(ValueError, match="unknown duality map"):
        dualize(g, "spectral", 1.0)


def test_target_norms_split_mass_and_sensitivity():
    assert target_norms([1, 1, 1]) == pytest.approx([1 / 3] * 3)
    assert target_norms([1, 2, 3], target=6.0) == pytest.approx([1.0, 2.0, 3.0])
    # M2∘M1∘M0 with sensitivities s: module k gets t·m_k/M / Π_{j>k} s_j.
    t = target_norms([1, 2, 3], [1.0, 2.0, 0.5])
    assert t == pytest.approx([1 / 6 / (2.0 * 0.5), 2 / 6 / 0.5, 3 / 6])
    # Bonds (activations) have mass 0 and get nothing; the others share as if the bonds were absent.
    assert target_norms([1, 0, 1, 0, 1]) == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])
    # With unit sensitivities the targets add up to the total.
    assert sum(target_norms([0.5, 1.5, 2.0, 1.0], target=2.0)) == pytest.approx(2.0)


def test_three_layer_mlp_atoms_and_targets():
    model = build_model("mlp", DataSpec("vector", (10,), 3, "classification"), depth=2, width=8)
    found = atoms(model)
    assert [a.name for a in found] == ["body.fc0", "body.fc1", "head"]
    assert [a.module_kind for a in found] == ["linear"] * 3
    groups = param_groups(model)
    assert [g["target"] for g in groups] == pytest.approx([1 / 3] * 3)
    assert sum(g["target"] for g in groups) == pytest.approx(1.0)
    weighted = param_groups(model, masses=[1, 1, 2], sensitivities=[1, 1, 1])
    assert [g["target"] for g in weighted] == pytest.approx([0.25, 0.25, 0.5])
    transformer = build_model("transformer", DataSpec("tokens", (5,), 7, "lm", vocab_size=7), n_layer=1, d_model=16,
                              n_head=2)
    kinds = {a.name: a.module_kind for a in atoms(transformer)}
    assert kinds["tok_emb"] == "embedding" and kinds["blocks.0.ln1"] == "other" and kinds["head"] == "linear"


def test_batched_step_equals_the_per_tensor_maps():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.Linear(8, 8, bias=False), nn.LayerNorm(8),
                          nn.Conv1d(8, 8, 3), nn.Linear(8, 4))
    groups = param_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt = Dualized(groups, lr=0.1, momentum=0.9, weight_decay=0.5, ns_dtype="float32")
    opt.step()
    kinds = {"0.weight": "embedding", "1.weight": "linear", "2.weight": "linear", "4.weight": "conv",
             "5.weight": "linear"}
    t = 1.0 / 6  # six atoms of mass 1
    for n, p in model.named_parameters():
        buf = 0.1 * grads[n]  # lerp(0, g, 1 - 0.9)
        want = before[n] * (1 - 0.1 * 0.5) - 0.1 * dualize(buf, kinds.get(n, "vector"), t, dtype=torch.float32)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6, msg=n)


def test_plain_tensors_each_form_an_atom():
    a, b = torch.zeros(4, 6, requires_grad=True), torch.zeros(6, requires_grad=True)
    opt = optim.build("dualized", [a, b], lr=1.0, momentum=0.0, exact=True)
    a.grad, b.grad = torch.randn(4, 6, generator=GEN), torch.randn(6, generator=GEN)
    opt.step()
    assert spectral(a.detach()) == pytest.approx(0.5 * math.sqrt(4 / 6), rel=1e-6)
    assert b.detach().pow(2).mean().sqrt().item() == pytest.approx(0.5, rel=1e-5)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trains_a_tiny_mlp_through_the_trainer(tmp_path):
    metrics = rows(trainlab.run(None, ["workload.p=23", "model.width=64", "steps=60", "eval_every=20",
                                       "optimizer=dualized"], out=tmp_path / "run", quiet=True, report=False))
    assert metrics[-1]["train_loss"] < 0.6 * metrics[0]["train_loss"]  # measured 3.14 -> 1.40
    assert metrics[0]["lr"] == 0.1


def test_runs_on_the_transformer(tmp_path):
    metrics = rows(trainlab.run(None, ["workload.p=23", "model=transformer", "model.n_layer=1", "model.d_model=32",
                                       "steps=6", "eval_every=3", "optimizer=dualized"],
                                out=tmp_path / "run", quiet=True, report=False))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
