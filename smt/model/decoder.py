"""Transformer decoder of the SMT: post-norm layers (self-attention, cross-attention, ReLU
feed-forward), run on whole sequences (training, teacher-forced decoding). Greedy decoding one
token at a time reads these same modules' weights in `smt.model.greedy`.

Attention runs through `F.scaled_dot_product_attention`, so the fused kernels (flash / memory
efficient on GPU, flash on CPU) keep attention memory linear in sequence length. Unlike the
reference we apply no dropout to the attention probabilities: that would force the math kernel
and materialise [B, heads, T, S] weights per layer; the residual dropouts remain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, scale: float | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.scale = scale          # None: SDPA's 1/sqrt(head_dim)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> [B, heads, L, head_dim] (a view)."""
        b, length, d = x.shape
        return x.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(key)), self.heads(self.v_proj(value))

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q = self.heads(self.q_proj(query))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             scale=self.scale)
        b, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, length, -1))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ff_dim: int, dropout: float,
                 attention_scale: float | None = None) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_scale)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_scale)
        self.ff1 = nn.Linear(d_model, ff_dim)
        self.ff2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _cross_and_ff(self, x: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                      memory_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm2(x + self.dropout(self.cross_attn.attend(x, cross_k, cross_v, memory_mask)))
        ff = self.ff2(self.dropout(F.relu(self.ff1(x))))
        return self.norm3(x + self.dropout(ff))

    def forward(self, x: torch.Tensor, memory_k: torch.Tensor, memory_v: torch.Tensor,
                memory_mask: torch.Tensor | None) -> torch.Tensor:
        """Full sequence, causal: x [B, T, d] -> [B, T, d]."""
        k, v = self.self_attn.project_kv(x, x)
        x = self.norm1(x + self.dropout(self.self_attn.attend(x, k, v, causal=True)))
        cross_k, cross_v = self.cross_attn.project_kv(memory_k, memory_v)
        return self._cross_and_ff(x, cross_k, cross_v, memory_mask)
