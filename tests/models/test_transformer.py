"""The decoder-only transformer: variants, causality, and the explicit attention path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.config import ConfigError
from trainlab.models import build
from trainlab.models.transformer import CausalSelfAttention, Transformer
from trainlab.workloads.base import DataSpec

CLS = DataSpec("tokens", (3,), 97, "classification", vocab_size=98)
LM = DataSpec("tokens", (16,), 50, "lm", vocab_size=50)
SMALL = {"n_layer": 2, "n_head": 4, "d_model": 32}


def tokens(spec: DataSpec, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (batch, *spec.input_shape), generator=g)


def layernorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


def test_default_is_a_two_layer_gpt():
    model = build("transformer", LM)
    assert isinstance(model, Transformer)
    assert len(model.blocks) == 2
    assert model.tok_emb.weight.shape == (50, 128) and model.pos_emb.weight.shape == (16, 128)
    assert model.blocks[0].attn.n_head == 4 and model.blocks[0].attn.head_dim == 32
    assert model.blocks[0].mlp.fc.out_features == 512
    assert isinstance(model.blocks[0].mlp.act, nn.GELU)
    assert len(layernorms(model)) == 2 * 2 + 1


def test_layernorm_false_removes_every_layernorm():
    model = build("transformer", LM, layernorm=False, n_layer=3)
    assert layernorms(model) == []
    out = model(tokens(LM))
    assert out.shape == (3, 16, 50) and torch.isfinite(out).all()


def test_qk_layernorm_adds_per_head_layernorms():
    model = build("transformer", LM, qk_layernorm=True, n_layer=3, n_head=2, d_model=32)
    names = layernorms(model)
    assert len(names) == 3 * 2 + 1 + 3 * 2
    for block in model.blocks:
        assert block.attn.q_norm.normalized_shape == (16,) and block.attn.k_norm.normalized_shape == (16,)
    # independent of the block norms
    only_qk = build("transformer", LM, qk_layernorm=True, layernorm=False, n_layer=3)
    assert sorted(layernorms(only_qk)) == sorted(
        f"blocks.{i}.attn.{q}_norm" for i in range(3) for q in "qk"
    )


def test_qk_layernorm_normalises_queries_and_keys():
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, qk_layernorm=True, bias=False)
    q, k, v = attn.heads(torch.randn(2, 5, 32))
    torch.testing.assert_close(q.mean(-1), torch.zeros(2, 4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(k.pow(2).mean(-1), torch.ones(2, 4, 5), atol=1e-3, rtol=0)


def test_n_head_must_divide_d_model():
    with pytest.raises(ConfigError) as err:
        build("transformer", LM, d_model=30, n_head=4)
    assert err.value.key == "model.n_head"
    assert "30" in str(err.value)


@pytest.mark.parametrize("variant", [{}, {"layernorm": False}, {"qk_layernorm": True}, {"n_layer": 1}])
def test_lm_is_causal(variant):
    torch.manual_seed(0)
    model = build("transformer", LM, **{**SMALL, **variant}).eval()
    x = tokens(LM)
    base = model(x)
    for j in (0, 7, 15):
        changed = x.clone()
        changed[:, j] = (changed[:, j] + 1) % LM.vocab_size
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out[:, j:], base[:, j:])


def test_classification_reads_the_last_position_of_the_same_network():
    torch.manual_seed(0)
    model = build("transformer", CLS, **SMALL)
    x = tokens(CLS)
    assert model(x).shape == (3, 97)
    model.lm = True  # the same network, read at every position
    full = model(x)
    assert full.shape == (3, 3, 97)
    model.lm = False
    torch.testing.assert_close(model(x), full[:, -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", [{}, {"qk_layernorm": True}, {"layernorm": False, "bias": False}])
def test_explicit_attention_equals_sdpa(variant, dtype):
    torch.manual_seed(0)
    model = build("transformer", LM, **{**SMALL, **variant}).to(dtype)
    x = model.embed(tokens(LM))
    for block in model.blocks:
        attn = block.attn
        h = block.ln1(x)
        fused = attn(h)
        explicit, w = attn(h, return_weights=True)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(explicit, fused, rtol=tol, atol=tol)
        q, k, _ = attn.heads(h)
        torch.testing.assert_close(w, attn.weights(q, k))
        x = block(x)


def test_attention_weights_are_causal_distributions():
    torch.manual_seed(0)
    model = build("transformer", LM, **SMALL).to(torch.float64)
    x = tokens(LM)
    maps = model.attention_weights(x)
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (3, 4, 16, 16)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 16, dtype=torch.float64))
        assert (w.triu(diagonal=1) == 0).all()
        assert (w >= 0).all()
    # the first position can only attend to itself
    assert (maps[0][..., 0, 0] == 1).all()
    # the explicit forward pass produces the same stream as the fused one
    stream = model.embed(x)
    explicit = stream
    for block in model.blocks:
        stream = block(stream)
        explicit, _ = block(explicit, return_weights=True)
    torch.testing.assert_close(explicit, stream)


def test_shorter_sequences_work_and_longer_are_refused():
    model = build("transformer", LM, **SMALL)
    assert model(tokens(LM)[:, :5]).shape == (3, 5, 50)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tied_embeddings():
    model = build("transformer", LM, tie_embeddings=True, **SMALL)
    assert model.head.weight is model.tok_emb.weight
    untied = build("transformer", LM, **SMALL)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(model) == 50 * 32
    model(tokens(LM)).sum().backward()
    assert model.tok_emb.weight.grad is not None
    with pytest.raises(ConfigError) as err:
        build("transformer", CLS, tie_embeddings=True)
    assert err.value.key == "model.tie_embeddings"


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = build("transformer", LM, n_layer=8, d_model=128)
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.001
    resid = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.proj.weight.std().item() - resid) < 0.1 * resid
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - resid) < 0.1 * resid
    assert (model.blocks[0].attn.qkv.bias == 0).all()
    assert (model.ln_f.weight == 1).all()


def test_bias_false_and_relu():
    model = build("transformer", LM, bias=False, activation="relu", **SMALL)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert isinstance(model.blocks[0].mlp.act, nn.ReLU)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build("transformer", LM, dropout=0.5, **SMALL)
    x = tokens(LM)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    explicit = model.attention_weights(x)[0]
    torch.testing.assert_close(explicit.sum(-1), torch.ones(3, 4, 16))


def test_d_mlp_and_zero_layers():
    assert build("transformer", LM, d_mlp=40, **SMALL).blocks[0].mlp.fc.out_features == 40
    model = build("transformer", LM, n_layer=0, d_model=16, n_head=2)
    assert model(tokens(LM)).shape == (3, 16, 50)
    assert model.attention_weights(tokens(LM)) == []
