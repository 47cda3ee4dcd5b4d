"""The IPR of neurons (Doshi et al. 2024) against closed forms, numpy's FFT and the autocorrelation identity; the
``ipr`` probe on hand-built weights, through the trainer, and where it does not apply."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import trainlab
from trainlab.models.mlp import MLP
from trainlab.models.transformer import Transformer
from trainlab.probes.ipr import HIGH_IPR, block_ipr, neuron_ipr, one_hot_modulus
from trainlab.probes.registry import PROBES, NotApplicable, ProbeContext
from trainlab.rundir import checkpoints
from trainlab.train.config import ProbeOptions
from trainlab.workloads.registry import build


def cosine(p: int, k: int, phase: float = 0.0, amplitude: float = 1.0) -> Tensor:
    a = torch.arange(p, dtype=torch.float64)
    return amplitude * torch.cos(2 * math.pi * k * a / p + phase)


def delta(p: int, at: int) -> Tensor:
    return F.one_hot(torch.tensor(at), p).to(torch.float64)


def neuron(a_block: Tensor, b_block: Tensor) -> Tensor:
    return torch.cat([a_block, b_block]).unsqueeze(0)


@pytest.mark.parametrize("p", [13, 12])
def test_a_single_frequency_has_ipr_one_half(p: int) -> None:
    # cos(2πka/p + φ) = (e^{iθ} + e^{-iθ})/2: P_k = P_{p-k} = (pA/2)², every other bin 0 -> 2x⁴/(2x²)² = 1/2
    for k in range(1, (p + 1) // 2):
        if 2 * k == p:
            continue
        for phase in (0.0, 0.7, -2.0):
            w = neuron(cosine(p, k, phase, 3.0), delta(p, 0))
            assert block_ipr(w, p, 2)[0, 0].item() == pytest.approx(0.5, abs=1e-12), (k, phase)


def test_dc_and_the_nyquist_bin_are_one_peak() -> None:
    p = 12
    w = neuron(torch.full((p,), 0.3, dtype=torch.float64), cosine(p, 6))  # constant; (-1)^a
    assert block_ipr(w, p, 2)[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("p", [5, 11, 97])
def test_a_one_hot_weight_has_a_flat_spectrum(p: int) -> None:
    # a delta's DFT has |w̃_k| = |w| for every k: p·w⁴ / (p·w²)² = 1/p, the minimum
    for at in (0, p // 2, p - 1):
        w = neuron(-2.5 * delta(p, at), delta(p, (at + 1) % p))
        assert block_ipr(w, p, 2)[0].tolist() == pytest.approx([1 / p, 1 / p], rel=1e-12)


def test_power_spread_over_m_frequencies_gives_one_over_2m() -> None:
    p = 31
    for m in (1, 2, 3, 5):
        block = sum((cosine(p, k, phase=0.3 * k) for k in range(1, m + 1)), torch.zeros(p, dtype=torch.float64))
        assert block_ipr(neuron(block, block), p, 2)[0, 0].item() == pytest.approx(1 / (2 * m), abs=1e-12)


def test_the_neuron_s_value_is_the_mean_of_its_blocks() -> None:
    p = 11
    w = torch.cat([neuron(cosine(p, 2), delta(p, 4)), neuron(delta(p, 0), delta(p, 3))])
    assert neuron_ipr(w, p, 2).tolist() == pytest.approx([(0.5 + 1 / p) / 2, 1 / p], rel=1e-12)


def test_scale_invariance() -> None:
    w = torch.randn(8, 2 * 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = neuron_ipr(w, 13)
    for scale in (1e-3, 7.0, -2.0):
        assert torch.allclose(neuron_ipr(scale * w, 13), base, rtol=1e-12, atol=0)
    rows = torch.tensor([0.1, 3.0, 50.0, 1.0, 2.0, 0.5, 9.0, 1e-2], dtype=torch.float64).unsqueeze(1)  # one scale per neuron
    assert torch.allclose(neuron_ipr(rows * w, 13), base, rtol=1e-12, atol=0)


@pytest.mark.parametrize("p,blocks,r", [(13, 2, 2), (16, 2, 2), (7, 3, 3), (10, 1, 1.5)])
def test_against_numpy_fft(p: int, blocks: int, r: float) -> None:
    w = torch.randn(5, blocks * p, generator=torch.Generator().manual_seed(p))
    spectrum = np.abs(np.fft.fft(w.numpy().astype(np.float64).reshape(5, blocks, p), axis=-1)) ** 2
    want = (spectrum**r).sum(-1) / spectrum.sum(-1) ** r
    assert np.allclose(block_ipr(w, p, blocks, r).numpy(), want, rtol=1e-12, atol=0)
    assert np.allclose(neuron_ipr(w, p, blocks, r).numpy(), want.mean(-1), rtol=1e-12, atol=0)


def test_against_the_circular_autocorrelation_without_any_fft() -> None:
    # Σ_k |w̃_k|² = p·R(0) and Σ_k |w̃_k|⁴ = p·Σ_m R(m)², R(m) = Σ_a w_a w_{a+m mod p}: IPR₂ = Σ_m R(m)² / (p·R(0)²)
    p = 17
    w = torch.randn(p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    autocorr = [sum(float(w[a] * w[(a + m) % p]) for a in range(p)) for m in range(p)]
    want = sum(c * c for c in autocorr) / (p * autocorr[0] ** 2)
    assert block_ipr(w.unsqueeze(0), p, 1)[0, 0].item() == pytest.approx(want, rel=1e-12)


def test_random_weights_sit_near_two_over_p() -> None:
    p = 97  # E[IPR] ≈ 2/p for i.i.d. Gaussian weights (complex Gaussian bins: E|z|⁴ = 2 E[|z|²]²)
    w = torch.randn(2000, 2 * p, generator=torch.Generator().manual_seed(1))
    assert neuron_ipr(w, p).mean().item() == pytest.approx(2 / p, rel=0.05)


def test_zero_blocks_and_bad_shapes() -> None:
    w = neuron(torch.zeros(5, dtype=torch.float64), cosine(5, 1))
    assert math.isnan(neuron_ipr(w, 5).item()) and block_ipr(w, 5, 2)[0, 1].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\(width, 10\)"):
        neuron_ipr(torch.ones(3, 9), 5)
    with pytest.raises(ValueError, match="r must exceed 1"):
        neuron_ipr(torch.ones(3, 10), 5, r=1)


def test_one_hot_inputs_are_recognised() -> None:
    data = build("modular", p=7).data("vector")
    assert one_hot_modulus(data.x_train) == 7
    assert one_hot_modulus(data.x_train[:, :7], blocks=1) == 7 and one_hot_modulus(data.x_train[:, :7]) is None
    three = data.x_train.clone()
    three[0, 1 if three[0, 0] else 0] = 1.0  # a second 1 in the a-block of the first row
    assert one_hot_modulus(three) is None
    assert one_hot_modulus(2 * data.x_train) is None


# ------------------------------------------------------------------------------------------------------ probe


def context(model: torch.nn.Module, x: Tensor, y: Tensor) -> ProbeContext:
    return ProbeContext(model=model, loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"), x_train=x,
                        y_train=y, x_val=x, y_val=y, step=0, lr=0.1, options=ProbeOptions(names=("ipr",)))


def probe(ctx: ProbeContext) -> dict[str, float]:
    return PROBES.get("ipr").factory(ctx)


def test_the_probe_on_hand_built_weights() -> None:
    p = 11
    data = build("modular", p=p).data("vector")
    model = MLP(2 * p, p, depth=1, width=4)
    rows = [neuron(cosine(p, 1), cosine(p, 3)), neuron(cosine(p, 2), delta(p, 5)), neuron(delta(p, 1), delta(p, 2)),
            torch.zeros(1, 2 * p, dtype=torch.float64)]  # the last: a pruned unit, left out
    with torch.no_grad():
        model.get_parameter("body.fc0.weight").copy_(torch.cat(rows))
    out = probe(context(model, data.x_train, data.y_train))
    values = [0.5, (0.5 + 1 / p) / 2, 1 / p]
    assert out["neurons"] == 3
    assert out["mean"] == pytest.approx(sum(values) / 3, rel=1e-6)
    assert (out["min"], out["median"], out["max"]) == pytest.approx((1 / p, (0.5 + 1 / p) / 2, 0.5), rel=1e-6)
    assert out["frac_high"] == pytest.approx(2 / 3)  # 0.5 and 0.295 exceed 0.2; 1/11 does not
    assert values[1] > HIGH_IPR > values[2]


def test_the_probe_through_the_trainer_reads_the_final_weights(tmp_path: Path) -> None:
    run = trainlab.run(None, ["workload.p=11", "model.width=16", "steps=6", "eval_every=3", "probes=ipr"],
                       out=tmp_path / "r", quiet=True, report=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in rows if "ipr/mean" in r]
    assert [r["step"] for r in probed] == [0, 3, 6]
    assert all(1 / 11 - 1e-9 <= r["ipr/min"] <= r["ipr/median"] <= r["ipr/max"] <= 1 for r in probed)
    assert all(r["ipr/neurons"] == 16 for r in probed)
    weight = checkpoints.load(run / "checkpoints")["model"]["body.fc0.weight"]
    want = neuron_ipr(weight, 11)
    assert probed[-1]["ipr/mean"] == pytest.approx(want.mean().item(), rel=1e-12)
    assert probed[-1]["ipr/frac_high"] == pytest.approx((want > HIGH_IPR).double().mean().item(), abs=1e-12)


def test_not_applicable_to_real_inputs_or_tokens() -> None:
    mnist = build("mnist1d", num_samples=200).data("signal")
    with pytest.raises(NotApplicable, match="one-hot"):
        probe(context(MLP(mnist.x_train[0].numel(), 10, depth=1, width=8), mnist.x_train[:16], mnist.y_train[:16]))
    tokens = build("modular", p=11).data("tokens")
    with pytest.raises(NotApplicable, match="body.fc0"):
        probe(context(Transformer(12, 3, 11, lm=False, n_layer=1, n_head=2, d_model=16), tokens.x_train[:8],
                      tokens.y_train[:8]))
    bits = build("sparse_parity", n=10, n_train=32, n_val=8).data("vector")  # ±1 bits, 2 x 5 features
    with pytest.raises(NotApplicable, match="one-hot codes of two residues"):
        probe(context(MLP(10, 2, depth=1, width=4), bits.x_train, bits.y_train))
