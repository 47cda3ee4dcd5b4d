"""A small decoder-only transformer (GPT-2 architecture at nanoGPT scale).

Learned token and position embeddings (maximum length ``spec.input_shape[0]``), ``n_layer`` pre-norm blocks
``x + attn(ln1(x))``, ``x + mlp(ln2(x))`` with causal multi-head self-attention, a final LayerNorm and a linear
``head`` (Radford et al. 2019; Karpathy's nanoGPT). Defaults: 2 layers, 4 heads, ``d_model`` 128, MLP width
``4·d_model``, GELU, no dropout, biases on, untied embeddings.

Output: for ``spec.task == "lm"`` next-token logits ``(batch, time, n_outputs)``; otherwise (classification,
regression) the head reads the last position only and returns ``(batch, n_outputs)`` -- e.g. modular
arithmetic as ``a b =`` token triples, as in Power et al. (2022) and Nanda et al. (2023).

Variants:

- ``layernorm=False`` removes every block and final LayerNorm (Nanda et al. 2023, "Progress measures for
  grokking via mechanistic interpretability", train a 1-layer transformer without LayerNorm).
- ``qk_layernorm=True`` applies a LayerNorm over the head dimension to queries and keys, per head
  (Dehghani et al. 2023, "Scaling vision transformers to 22B parameters"; Wortsman et al. 2023, "Small-scale
  proxies for large-scale transformer training instabilities"). It is independent of ``layernorm``.
- ``tie_embeddings=True`` shares the head's weight with the token embedding (needs ``n_outputs ==
  vocab_size``, as in language modelling).

Initialisation is GPT-2's: Linear and Embedding weights ~ N(0, 0.02²), the two residual output projections of
each block ~ N(0, (0.02/√(2·n_layer))²), biases 0, LayerNorm gains 1; ``init_scale`` then multiplies every
parameter (LayerNorm gains included).

Attention is computed with ``F.scaled_dot_product_attention(is_causal=True)`` in
:meth:`CausalSelfAttention.attend`; :meth:`CausalSelfAttention.weights` computes the same attention
explicitly, ``softmax(QKᵀ/√d_head + causal mask)``, for probes (attention entropy, attention maps).
``forward(x, return_weights=True)`` on an attention module uses that explicit path and also returns the
weights; :meth:`Transformer.attention_weights` returns them for every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.config import ConfigError, option
from trainlab.models.layers import activation, scale_parameters_
from trainlab.models.registry import register
from trainlab.workloads.base import DataSpec


@dataclass
class TransformerOptions:
    n_layer: int = option(2, help="number of transformer blocks", ge=0, le=1000)
    n_head: int = option(4, help="attention heads per block (must divide d_model)", ge=1)
    d_model: int = option(128, help="residual stream width", ge=1)
    d_mlp: int = option(0, help="hidden width of each block's MLP (0: 4*d_model)", ge=0)
    dropout: float = option(0.0, help="dropout on embeddings, attention weights and residual branches", ge=0, lt=1)
    layernorm: bool = option(True, help="LayerNorm before each sublayer and at the end (false: none of these; see qk_layernorm)")
    qk_layernorm: bool = option(False, help="LayerNorm on queries and keys per head (Dehghani/Wortsman et al.)")
    bias: bool = option(True, help="biases in Linear and LayerNorm layers")
    activation: Literal["gelu", "relu"] = option("gelu", help="MLP nonlinearity")
    tie_embeddings: bool = option(False, help="share the head weight with the token embedding (lm only)")
    init_scale: float = option(1.0, help="multiply every parameter by this after GPT-2 initialisation", gt=0)

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError("n_head", f"must divide d_model={self.d_model}, got {self.n_head}")


def _norm(dim: int, enabled: bool, bias: bool) -> nn.Module:
    return nn.LayerNorm(dim, bias=bias) if enabled else nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional per-head LayerNorm on queries and keys."""

    def __init__(self, d_model: int, n_head: int, *, bias: bool = True, dropout: float = 0.0,
                 qk_layernorm: bool = False) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"n_head={n_head} must divide d_model={d_model}")
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.q_norm = _norm(self.head_dim, qk_layernorm, bias)
        self.k_norm = _norm(self.head_dim, qk_layernorm, bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, each ``(batch, n_head, time, head_dim)``, after the optional QK norms."""
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention itself (fused kernel): ``softmax(QKᵀ/√d + causal mask) V``."""
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                              is_causal=True)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        """The attention weights computed explicitly: ``softmax(QKᵀ/√d + causal mask)``, ``(b, h, t, t)``."""
        t = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(diagonal=1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(batch, time, d_model) -> (batch, time, d_model)``; with ``return_weights`` the explicit path,
        returning ``(output, weights)`` (the weights before attention dropout)."""
        b, t, d = x.shape
        q, k, v = self.heads(x)
        if return_weights:
            w = self.weights(q, k)
            y = F.dropout(w, self.dropout, self.training) @ v
        else:
            y = self.attend(q, k, v)
        out = self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return (out, w) if return_weights else out


class MLPBlock(nn.Module):
    """The position-wise feed-forward sublayer ``Linear -> activation -> Linear -> dropout``."""

    def __init__(self, d_model: int, d_mlp: int, *, activation_name: str = "gelu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_mlp, bias=bias)
        self.act = activation(activation_name)
        self.proj = nn.Linear(d_mlp, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_head: int, d_mlp: int, *, layernorm: bool = True,
                 qk_layernorm: bool = False, bias: bool = True, activation_name: str = "gelu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = _norm(d_model, layernorm, bias)
        self.attn = CausalSelfAttention(d_model, n_head, bias=bias, dropout=dropout, qk_layernorm=qk_layernorm)
        self.ln2 = _norm(d_model, layernorm, bias)
        self.mlp = MLPBlock(d_model, d_mlp, activation_name=activation_name, bias=bias, dropout=dropout)

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if return_weights:
            a, w = self.attn(self.ln1(x), return_weights=True)
            x = x + a
            return x + self.mlp(self.ln2(x)), w
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Decoder-only transformer over token ids ``(batch, time)``.

    ``lm=True``: logits at every position ``(batch, time, n_outputs)``; otherwise at the last position only.
    """

    def __init__(self, vocab_size: int, max_len: int, n_outputs: int, *, lm: bool, n_layer: int = 2,
                 n_head: int = 4, d_model: int = 128, d_mlp: int = 0, dropout: float = 0.0,
                 layernorm: bool = True, qk_layernorm: bool = False, bias: bool = True,
                 activation_name: str = "gelu", tie_embeddings: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.max_len = max_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, d_mlp or 4 * d_model, layernorm=layernorm, qk_layernorm=qk_layernorm,
                  bias=bias, activation_name=activation_name, dropout=dropout)
            for _ in range(n_layer)
        )
        self.ln_f = _norm(d_model, layernorm, bias)
        self.head = nn.Linear(d_model, n_outputs, bias=bias)
        self._init_gpt2(n_layer)
        if tie_embeddings:
            if n_outputs != vocab_size:
                raise ValueError(f"tied embeddings need n_outputs == vocab_size, got {n_outputs} != {vocab_size}")
            self.head.weight = self.tok_emb.weight

    @torch.no_grad()
    def _init_gpt2(self, n_layer: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith((".attn.proj", ".mlp.proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, idx: Tensor) -> Tensor:
        """Token plus position embeddings (after dropout): ``(batch, time, d_model)``."""
        t = idx.shape[-1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds the model's maximum length {self.max_len}")
        pos = torch.arange(t, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))

    def features(self, idx: Tensor) -> Tensor:
        """The final (normalised) residual stream: ``(batch, time, d_model)``."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.features(idx)
        return self.head(h if self.lm else h[:, -1])

    def attention_weights(self, idx: Tensor) -> list[Tensor]:
        """Explicitly computed attention weights of every layer, each ``(batch, n_head, time, time)``."""
        x = self.embed(idx)
        maps = []
        for block in self.blocks:
            x, w = block(x, return_weights=True)
            maps.append(w)
        return maps


@register("transformer", options=TransformerOptions, input_kinds=("tokens",))
def build_transformer(spec: DataSpec, options: TransformerOptions) -> nn.Module:
    """Decoder-only (GPT-style) transformer; lm logits per position, else logits at the last position."""
    if spec.vocab_size is None:
        raise ValueError("the transformer needs spec.vocab_size for token inputs")
    if options.tie_embeddings and spec.n_outputs != spec.vocab_size:
        raise ConfigError("model.tie_embeddings", f"needs n_outputs == vocab_size, but this workload has "
                          f"{spec.n_outputs} outputs and {spec.vocab_size} tokens")
    model = Transformer(spec.vocab_size, spec.input_shape[0], spec.n_outputs, lm=spec.task == "lm",
                        n_layer=options.n_layer, n_head=options.n_head, d_model=options.d_model,
                        d_mlp=options.d_mlp, dropout=options.dropout, layernorm=options.layernorm,
                        qk_layernorm=options.qk_layernorm, bias=options.bias, activation_name=options.activation,
                        tie_embeddings=options.tie_embeddings)
    return scale_parameters_(model, options.init_scale)
