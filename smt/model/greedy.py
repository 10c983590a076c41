"""Batched greedy decoding with little work per token: the cross-attention keys/values computed
once per image, one preallocated self-attention key/value cache written in place, one fused
q/k/v projection per layer (built from the layers' own weights, so checkpoints keep their
keys), 2D [rows, d_model] activations (no per-token reshapes), and one host sync per token
(did a row emit <eos>?). Finished rows are compacted out of the caches, so later tokens cost
nothing for them.

The arithmetic is the training path's, op for op (same linears, same
`scaled_dot_product_attention` calls, same residual-then-norm order), so the greedy tokens are
those of `SMTModel.greedy_uncached`, which re-runs the whole decoder like the reference's
`predict` does (tests/smt/test_decode.py checks it on rows ending at different steps).

The cross-attention reads every image's keys/values at every token: [rows, S, d_model] twice
per layer, which is memory-bound on a CPU (about 25 MB a token for a 256x1536 image with the
`paper` decoder), so batching amortises the weights and the per-op overhead, not that.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepWeights:
    """One decoder layer's parameters as a decoding step reads them: the self-attention's
    q/k/v projections concatenated ([3 * d, d]: one matmul instead of three), the others as
    (weight, bias) pairs of the layer's own tensors (no copy; plain tensors, so a step skips
    nn.Module call overhead, ~2 us a call, 80 calls a token)."""
    qkv: tuple[torch.Tensor, torch.Tensor]
    self_out: tuple[torch.Tensor, torch.Tensor]
    cross_q: tuple[torch.Tensor, torch.Tensor]
    cross_out: tuple[torch.Tensor, torch.Tensor]
    ff1: tuple[torch.Tensor, torch.Tensor]
    ff2: tuple[torch.Tensor, torch.Tensor]
    norms: tuple[tuple[torch.Tensor, torch.Tensor, float], ...]   # (weight, bias, eps)
    scale: float | None

    @classmethod
    def of(cls, layer: nn.Module) -> StepWeights:
        attn, cross = layer.self_attn, layer.cross_attn
        # Concatenated per call, not stored: a parameter the optimizer changed (or a freshly
        # loaded state_dict) is never stale, and the copy is ~0.8 MB per layer.
        qkv = (torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
               torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))

        def wb(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
            return linear.weight, linear.bias
        norms = tuple((n.weight, n.bias, n.eps) for n in (layer.norm1, layer.norm2, layer.norm3))
        return cls(qkv, wb(attn.out_proj), wb(cross.q_proj), wb(cross.out_proj), wb(layer.ff1),
                   wb(layer.ff2), norms, attn.scale)


@dataclass
class DecodeCache:
    """The decoding state of every layer, allocated once per call. Rows [0, live) are the
    rows still decoding; compacting after an <eos> moves them to the front in place.

    self_kv: [layers, 2 (key, value), rows, heads, max_len, head_dim], filled up to the
    current position; cross_k / cross_v: [layers, rows, heads, S, head_dim]; mask:
    [rows, 1, 1, S] (True inside the image) or None when every cell is inside."""
    self_kv: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor
    mask: torch.Tensor | None
    live: int

    @classmethod
    def start(cls, layers: nn.ModuleList, keys: torch.Tensor, values: torch.Tensor,
              mask: torch.Tensor | None, max_len: int) -> DecodeCache:
        """Project the image features once per layer. The cache takes the projections' dtype,
        so under autocast (bf16 on GPU) it holds what the step's own projections produce."""
        cross = [layer.cross_attn.project_kv(keys, values) for layer in layers]
        cross_k = torch.stack([k for k, _ in cross])
        cross_v = torch.stack([v for _, v in cross])
        n_layers, rows, heads, _, head_dim = cross_k.shape
        self_kv = cross_k.new_empty(n_layers, 2, rows, heads, max_len, head_dim)
        return cls(self_kv, cross_k, cross_v, mask, rows)

    def keep(self, keep: torch.Tensor, filled: int) -> None:
        """Move the rows `keep` (indices among the live rows, ascending) to the front. Only the
        filled part of the self-attention cache moves: a shrink costs about one token's reads."""
        n = keep.numel()
        self.self_kv[:, :, :n, :, :filled] = self.self_kv[:, :, keep, :, :filled]
        self.cross_k[:, :n] = self.cross_k[:, keep]
        self.cross_v[:, :n] = self.cross_v[:, keep]
        if self.mask is not None:
            self.mask = self.mask[keep]
        self.live = n


def decoder_step(weights: list[StepWeights], x: torch.Tensor, position: int,
                 cache: DecodeCache) -> torch.Tensor:
    """All layers for one new token per live row: x [rows, d] (embedding + position) ->
    decoder output [rows, d]. Writes the token's self-attention key/value at `position`."""
    n, d = x.shape
    heads, head_dim = cache.self_kv.shape[3], cache.self_kv.shape[5]
    mask = cache.mask

    def norm(y: torch.Tensor, which: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
        return F.layer_norm(y, (d,), which[0], which[1], which[2])
    for i, w in enumerate(weights):
        qkv = F.linear(x, *w.qkv).view(n, 3, heads, head_dim)
        kv = cache.self_kv[i, :, :n]                                # [2, rows, heads, L, hd]
        kv[:, :, :, position] = qkv[:, 1:].transpose(0, 1)
        attn = F.scaled_dot_product_attention(qkv[:, 0, :, None], kv[0, :, :, : position + 1],
                                              kv[1, :, :, : position + 1], scale=w.scale)
        x = norm(x + F.linear(attn.view(n, d), *w.self_out), w.norms[0])
        q = F.linear(x, *w.cross_q).view(n, heads, 1, head_dim)
        attn = F.scaled_dot_product_attention(q, cache.cross_k[i, :n], cache.cross_v[i, :n],
                                              attn_mask=mask, scale=w.scale)
        x = norm(x + F.linear(attn.view(n, d), *w.cross_out), w.norms[1])
        x = norm(x + F.linear(F.relu(F.linear(x, *w.ff1)), *w.ff2), w.norms[2])
    return x


class CompiledStep:
    """`torch.compile` of `decoder_step`, made once per process and shared by every call (the
    weights and caches are its arguments, so a new call or a shrinking batch reuses it; dynamic
    shapes, so neither the position nor the batch recompiles it), with a clean fallback: if
    compiling or a compiled call fails (e.g. no C++ compiler on a CPU), this call and every
    later one run eagerly."""

    def __init__(self) -> None:
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.failed = False

    def __call__(self, weights: list[StepWeights], x: torch.Tensor, position: int,
                 cache: DecodeCache) -> torch.Tensor:
        if not self.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(decoder_step, dynamic=True)
                return self.compiled(weights, x, position, cache)
            except Exception:                            # noqa: BLE001 - any failure: eager
                self.failed = True
        return decoder_step(weights, x, position, cache)


COMPILED_STEP = CompiledStep()


def greedy_decode(model: nn.Module, keys: torch.Tensor, values: torch.Tensor,
                  mask: torch.Tensor | None, max_len: int, *, compile: bool = False
                  ) -> list[list[int]]:
    """Greedy ids per image (without <bos>/<eos>), at most max_len each. `model` is an
    SMTModel in eval mode; call under torch.inference_mode (or no_grad)."""
    cfg = model.config
    rows = keys.shape[0]
    weights = [StepWeights.of(layer) for layer in model.layers]
    cache = DecodeCache.start(model.layers, keys, values, mask, max_len)
    step = COMPILED_STEP if compile else decoder_step
    device = keys.device
    out = torch.full((rows, max_len), cfg.eos_id, dtype=torch.long, device=device)
    index = torch.arange(rows, device=device)         # original row of each live row
    tokens = torch.full((rows,), cfg.bos_id, dtype=torch.long, device=device)
    for position in range(max_len):
        x = model.embedding(tokens) + model.positions[position]
        tokens = model.logits(step(weights, x, position, cache)).argmax(dim=-1)
        out[index, position] = tokens
        done = tokens == cfg.eos_id
        if bool(done.any()):                            # the one host sync per token
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.keep(keep, position + 1)
            index, tokens = index[keep], tokens[keep]
    result = []
    for row in out.tolist():
        result.append(row[: row.index(cfg.eos_id)] if cfg.eos_id in row else row)
    return result
