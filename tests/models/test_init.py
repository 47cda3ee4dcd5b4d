"""Named initialisations: orthogonality, the spectral condition, and Luther & Seung's sample statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.models import build
from trainlab.models.init import INITS, apply_init, data_dependent_init_, orthogonal_init_, spectral_init_
from trainlab.models.reparam import apply_sigma_reparam_
from trainlab.workloads.base import DataSpec

VEC = DataSpec("vector", (12,), 5, "classification")
IMG = DataSpec("image", (3, 10, 10), 4, "classification")
SIG = DataSpec("signal", (2, 20), 3, "classification")
TOK = DataSpec("tokens", (4,), 11, "classification", vocab_size=13)


def matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach().reshape(p.shape[0], -1)) for n, p in model.named_parameters() if p.dim() >= 2]


def gram_is_identity(w: torch.Tensor, scale: float = 1.0) -> bool:
    """WWᵀ (wide) or WᵀW (tall) equals scale²·I."""
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(g, scale**2 * torch.eye(g.shape[0]), atol=1e-5 * max(1.0, scale**2))


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_init_makes_every_weight_semi_orthogonal(gain):
    torch.manual_seed(0)
    for model in (build("mlp", VEC, width=24, depth=2), build("cnn2d", IMG, channels=4, depth=2)):
        assert not any(gram_is_identity(w, gain) for _, w in matrices(model))  # PyTorch's default init is not
        biases = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 1}
        assert orthogonal_init_(model, gain=gain) is model
        for name, w in matrices(model):
            assert gram_is_identity(w, gain), name
        for n, p in model.named_parameters():
            if p.dim() == 1:
                assert torch.equal(p, biases[n])  # biases untouched


def test_orthogonal_init_covers_tall_wide_and_conv_shapes():
    torch.manual_seed(0)
    model = build("cnn1d", SIG, channels=6, depth=2, kernel_size=5)
    orthogonal_init_(model)
    conv0 = model.body.conv0.weight.detach().reshape(6, -1)  # (out, in·k) = (6, 10): wide
    torch.testing.assert_close(conv0 @ conv0.T, torch.eye(6), atol=1e-5, rtol=0)
    conv1 = model.body.conv1.weight.detach().reshape(6, -1)  # (6, 30): wide
    torch.testing.assert_close(conv1 @ conv1.T, torch.eye(6), atol=1e-5, rtol=0)
    mlp = orthogonal_init_(build("mlp", VEC, width=40, depth=1))
    w = mlp.body.fc0.weight.detach()  # (40, 12): tall, orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(12), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["mlp", "cnn2d", "cnn1d"])
def test_spectral_init_gives_spectral_norm_sqrt_fan_out_over_fan_in(kind):
    torch.manual_seed(0)
    spec, opts = {"mlp": (VEC, {"width": 30, "depth": 2}), "cnn2d": (IMG, {"channels": 4, "depth": 2}),
                  "cnn1d": (SIG, {"channels": 6, "depth": 2})}[kind]
    model = spectral_init_(build(kind, spec, **opts))
    for name, w in matrices(model):
        fan_out, fan_in = w.shape
        expected = math.sqrt(fan_out / fan_in)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(expected, rel=1e-5), name
        # semi-orthogonal: every nonzero singular value is the same
        torch.testing.assert_close(torch.linalg.svdvals(w), torch.full((min(w.shape),), expected), rtol=1e-5, atol=0)
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert (p == 0).all(), n


def test_spectral_init_gives_embeddings_unit_rms_rows():
    torch.manual_seed(0)
    model = spectral_init_(build("transformer", TOK, n_layer=1, n_head=2, d_model=16))
    for emb in (model.tok_emb.weight, model.pos_emb.weight):
        torch.testing.assert_close(emb.detach().pow(2).mean(1), torch.ones(emb.shape[0]), rtol=1e-5, atol=1e-6)
    qkv = model.blocks[0].attn.qkv.weight.detach()
    assert torch.linalg.matrix_norm(qkv, ord=2).item() == pytest.approx(math.sqrt(3), rel=1e-5)
    assert (model.ln_f.weight == 1).all()  # norm gains are not weights
    assert torch.isfinite(model(torch.randint(0, 13, (2, 4)))).all()


def preactivation_stats(model: nn.Module, inputs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-unit sample mean and variance (divisor N) of every Linear/Conv output, recorded with hooks."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def record(module, args, y):
            y = y.detach().double()
            y = y.transpose(1, -1) if isinstance(module, (nn.Conv1d, nn.Conv2d)) else y
            y = y.reshape(-1, y.shape[-1])
            out.setdefault(name, (y.mean(0), y.var(0, correction=0)))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(inputs)
    for h in handles:
        h.remove()
    return out


CASES = {
    "mlp": (VEC, {"width": 32, "depth": 3}),
    "mlp_no_bias": (VEC, {"width": 32, "depth": 3, "bias": False}),
    "mlp_relu_deep": (VEC, {"width": 16, "depth": 6}),
    "cnn1d": (SIG, {"channels": 5, "depth": 2}),
    "cnn2d": (IMG, {"channels": 3, "depth": 2}),
    "transformer": (TOK, {"n_layer": 2, "n_head": 2, "d_model": 16}),
    "transformer_no_bias": (TOK, {"n_layer": 1, "n_head": 2, "d_model": 16, "bias": False, "layernorm": False}),
}


def batch(spec: DataSpec, n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if spec.input_kind == "tokens":
        return torch.randint(0, spec.vocab_size, (n, *spec.input_shape), generator=g)
    return torch.randn(n, *spec.input_shape, generator=g).abs()  # positive inputs: nonzero means to remove


@pytest.mark.parametrize("case", list(CASES))
def test_data_dependent_init_gives_zero_sample_mean_and_unit_sample_variance(case):
    torch.manual_seed(0)
    spec, opts = CASES[case]
    model = build("transformer" if case.startswith("transformer") else case.split("_")[0], spec, **opts)
    x = batch(spec)
    before = preactivation_stats(model, x)
    assert any((var - 1).abs().max() > 0.1 or mean.abs().max() > 0.1 for mean, var in before.values())
    model.train()
    assert data_dependent_init_(model, x) is model
    assert model.training  # mode restored
    after = preactivation_stats(model, x)
    assert after.keys() == before.keys()
    for name, (mean, var) in after.items():
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0, msg=name)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0, msg=name)
    # statistics of the batch, not of the distribution: another batch is only roughly normalised
    other = preactivation_stats(model, batch(spec, 7) + (0 if spec.input_kind == "tokens" else 0.5))
    assert any((v - 1).abs().max() > 1e-3 for _, v in other.values())


def test_data_dependent_init_without_bias_scale_keeps_directions_and_sets_second_moment():
    torch.manual_seed(0)
    model = build("mlp", VEC, width=20, depth=2, bias=False)
    x = batch(VEC)
    directions = {n: nn.functional.normalize(w, dim=1) for n, w in matrices(model)}
    data_dependent_init_(model, x, without_bias="scale")
    for name, w in matrices(model):
        torch.testing.assert_close(nn.functional.normalize(w, dim=1), directions[name], atol=1e-5, rtol=0)
    for name, (mean, var) in preactivation_stats(model, x).items():
        torch.testing.assert_close(mean.square() + var, torch.ones_like(var), atol=1e-4, rtol=0, msg=name)
    # the hidden layers read ReLU outputs (positive): their means cannot be 0 without a bias
    assert preactivation_stats(model, x)["body.fc1"][0].abs().max() > 0.1


def test_data_dependent_init_excludes_by_name_and_refuses_sigma_reparam():
    torch.manual_seed(0)
    model = build("mlp", VEC, width=16, depth=2)
    head = model.head.weight.detach().clone()
    data_dependent_init_(model, batch(VEC), exclude=("head",))
    assert torch.equal(model.head.weight, head)
    stats = preactivation_stats(model, batch(VEC))
    torch.testing.assert_close(stats["body.fc1"][1], torch.ones(16, dtype=torch.float64), atol=1e-4, rtol=0)
    apply_sigma_reparam_(model)
    with pytest.raises(ValueError, match="before apply_sigma_reparam_"):
        data_dependent_init_(model, batch(VEC))
    with pytest.raises(ValueError, match="without_bias"):
        data_dependent_init_(build("mlp", VEC), batch(VEC), without_bias="shift")


def test_inits_by_name():
    assert {"default", "orthogonal", "spectral", "data_dependent"} <= set(INITS.names())
    assert all(entry.summary for entry in INITS)
    torch.manual_seed(0)
    model = build("mlp", VEC, width=8, depth=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert apply_init(model, "default") is model
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    apply_init(model, "orthogonal", gain=2.0)
    assert all(gram_is_identity(w, 2.0) for _, w in matrices(model))
    apply_init(model, "data_dependent", inputs=batch(VEC))
    mean, var = preactivation_stats(model, batch(VEC))["head"]
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="allowed: default, orthogonal, spectral, data_dependent"):
        apply_init(model, "xavier")


def test_nanda_init_draws_the_papers_scales_on_the_transformer():
    """Nanda et al.'s code: every weight randn/sqrt(d_model), the unembedding randn/sqrt(d_vocab), biases 0."""
    from trainlab.models.init import nanda_init_

    spec = DataSpec(input_kind="tokens", input_shape=(3,), n_outputs=113, task="classification", vocab_size=114)
    torch.manual_seed(0)
    model = build("transformer", spec, n_layer=1, n_head=4, d_model=128, d_mlp=512, layernorm=False)
    nanda_init_(model)
    stds = {name: p.std().item() for name, p in model.named_parameters() if p.dim() >= 2}
    assert set(stds) >= {"tok_emb.weight", "pos_emb.weight", "head.weight"} and len(stds) >= 7
    for name, std in stds.items():
        expected = 1 / math.sqrt(113) if name == "head.weight" else 1 / math.sqrt(128)
        # a sample std of >= 384 draws (pos_emb: 3 x 128) is within 10% of sigma with overwhelming probability
        assert std == pytest.approx(expected, rel=0.1), name
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n.endswith("bias"))
    with pytest.raises(ValueError, match="needs model=transformer"):
        nanda_init_(nn.Sequential(nn.Linear(3, 4)))
    assert "nanda" in INITS.names()
