"""Transformer decoder of the SMT: post-norm layers (self-attention, cross-attention, ReLU
feed-forward), each with a full-sequence path for training and a one-token path that reads and
extends a key/value cache for decoding.

Attention runs through `F.scaled_dot_product_attention`, so the fused kernels (flash / memory
efficient on GPU, flash on CPU) keep attention memory linear in sequence length. Unlike the
reference we apply no dropout to the attention probabilities: that would force the math kernel
and materialise [B, heads, T, S] weights per layer; the residual dropouts remain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LayerCache:
    """One layer's decoding state: self-attention keys/values of the tokens so far
    ([B, heads, max_len, head_dim], filled up to the current step) and the cross-attention
    keys/values of the image (computed once per image)."""
    self_k: torch.Tensor
    self_v: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows so later steps spend nothing on them."""
        self.self_k = self.self_k.index_select(0, rows)
        self.self_v = self.self_v.index_select(0, rows)
        self.cross_k = self.cross_k.index_select(0, rows)
        self.cross_v = self.cross_v.index_select(0, rows)


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

    def start_cache(self, memory_k: torch.Tensor, memory_v: torch.Tensor, max_len: int) -> LayerCache:
        cross_k, cross_v = self.cross_attn.project_kv(memory_k, memory_v)
        b, heads, _, head_dim = cross_k.shape
        empty = cross_k.new_empty(b, heads, max_len, head_dim)
        return LayerCache(empty, torch.empty_like(empty), cross_k, cross_v)

    def step(self, x: torch.Tensor, position: int, cache: LayerCache,
             memory_mask: torch.Tensor | None) -> torch.Tensor:
        """One new token per row: x [B, 1, d] at `position`; writes its key/value into the cache
        and attends over positions 0..position (all earlier ones, so no mask is needed)."""
        k, v = self.self_attn.project_kv(x, x)
        cache.self_k[:, :, position] = k[:, :, 0]
        cache.self_v[:, :, position] = v[:, :, 0]
        attn = self.self_attn.attend(x, cache.self_k[:, :, : position + 1],
                                     cache.self_v[:, :, : position + 1])
        x = self.norm1(x + self.dropout(attn))
        return self._cross_and_ff(x, cache.cross_k, cache.cross_v, memory_mask)
