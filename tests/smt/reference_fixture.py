"""A reference-format SMT checkpoint folder made from scratch, and the reference's forward
pass written out with plain tensor ops, so conversion can be checked without the hub.

The key names and shapes are those of the reference `SMTModelForCausalLM` (Hugging Face
ConvNextModel encoder; "smt" or "smt++" decoder naming); weights are random, sizes tiny.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

WIDTHS, DEPTHS = (8, 16, 32), (1, 1, 2)
D_MODEL, FF, LAYERS, HEADS = 32, 48, 2, 2
MAXH, MAXW, MAXLEN = 512, 1024, 64
# Kern fields as the reference's system-level vocabularies hold them (whole fields).
WORDS = ["**kern", "*clefF4", "*clefG2", "4c", "4e", "8g", "=", "*-", ".", "2r", "4cc", "16dd#"]


def vocabulary(seed: int = 0) -> dict[str, int]:
    """w2i with <pad> = 0 and every other id shuffled, as the reference's set() order gives."""
    tokens = ["<bos>", "<eos>", "<b>", "<t>", "<s>", *WORDS]
    random.Random(seed).shuffle(tokens)
    return {"<pad>": 0, **{t: i + 1 for i, t in enumerate(tokens)}}


def reference_state(layout: str = "smt", vocab_size: int = 18, seed: int = 0, *,
                    widths: tuple[int, ...] = WIDTHS, depths: tuple[int, ...] = DEPTHS,
                    d_model: int = D_MODEL, ff: int = FF, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """Every parameter of the reference model, by its name there (sizes: the tiny test model,
    or the published one with widths (64, 128, 256), depths (3, 3, 9), 256, 256, 8)."""
    g = torch.Generator().manual_seed(seed)
    WIDTHS, DEPTHS, D_MODEL, FF, LAYERS = widths, depths, d_model, ff, layers  # noqa: N806

    def rnd(*shape: int, scale: float = 0.2, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    s: dict[str, torch.Tensor] = {}
    w0 = WIDTHS[0]
    s["encoder.embeddings.patch_embeddings.weight"] = rnd(w0, 1, 4, 4)
    s["encoder.embeddings.patch_embeddings.bias"] = rnd(w0)
    s["encoder.embeddings.layernorm.weight"], s["encoder.embeddings.layernorm.bias"] = rnd(w0, base=1.0), rnd(w0)
    for st, (w, depth) in enumerate(zip(WIDTHS, DEPTHS)):
        stage = f"encoder.encoder.stages.{st}"
        if st:
            prev = WIDTHS[st - 1]
            s[f"{stage}.downsampling_layer.0.weight"] = rnd(prev, base=1.0)
            s[f"{stage}.downsampling_layer.0.bias"] = rnd(prev)
            s[f"{stage}.downsampling_layer.1.weight"] = rnd(w, prev, 2, 2)
            s[f"{stage}.downsampling_layer.1.bias"] = rnd(w)
        for j in range(depth):
            p = f"{stage}.layers.{j}"
            s[f"{p}.dwconv.weight"], s[f"{p}.dwconv.bias"] = rnd(w, 1, 7, 7), rnd(w)
            s[f"{p}.layernorm.weight"], s[f"{p}.layernorm.bias"] = rnd(w, base=1.0), rnd(w)
            s[f"{p}.pwconv1.weight"], s[f"{p}.pwconv1.bias"] = rnd(4 * w, w), rnd(4 * w)
            s[f"{p}.pwconv2.weight"], s[f"{p}.pwconv2.bias"] = rnd(w, 4 * w), rnd(w)
            s[f"{p}.layer_scale_parameter"] = rnd(w, base=0.5)
    s["encoder.layernorm.weight"], s["encoder.layernorm.bias"] = rnd(WIDTHS[-1], base=1.0), rnd(WIDTHS[-1])
    s["decoder.embedding.weight"] = rnd(vocab_size, D_MODEL, scale=1.0)
    names = (("self_attn", "cross_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), "ffn",
              [f"norm_layers.{i}" for i in range(3)]) if layout == "smt" else
             ("input_attention", "cross_attention", ("lq", "lk", "lv", "out_proj"), "ffNet",
              [f"norm{i}" for i in (1, 2, 3)]))
    self_name, cross_name, projs, ffn, norms = names
    for i in range(LAYERS):
        p = f"decoder.decoder.layers.{i}"
        for att in (self_name, cross_name):
            for proj in projs:
                s[f"{p}.{att}.{proj}.weight"], s[f"{p}.{att}.{proj}.bias"] = rnd(D_MODEL, D_MODEL), rnd(D_MODEL)
        s[f"{p}.{ffn}.0.weight"], s[f"{p}.{ffn}.0.bias"] = rnd(FF, D_MODEL), rnd(FF)
        s[f"{p}.{ffn}.3.weight"], s[f"{p}.{ffn}.3.bias"] = rnd(D_MODEL, FF), rnd(D_MODEL)
        for norm in norms:
            s[f"{p}.{norm}.weight"], s[f"{p}.{norm}.bias"] = rnd(D_MODEL, base=1.0), rnd(D_MODEL)
    if layout == "smt":
        s["decoder.vocab_projection.weight"] = rnd(vocab_size, D_MODEL)
        s["decoder.vocab_projection.bias"] = rnd(vocab_size)
    else:
        s["decoder.out_layer.weight"] = rnd(vocab_size, D_MODEL, 1)
        s["decoder.out_layer.bias"] = rnd(vocab_size)
    return s


def reference_config(w2i: dict[str, int], layout: str = "smt") -> dict:
    config = {"architectures": ["SMT"], "model_type": "SMT", "maxh": MAXH, "maxw": MAXW,
              "maxlen": MAXLEN, "out_categories": len(w2i), "padding_token": 0, "in_channels": 1,
              "w2i": w2i, "i2w": {str(i): t for t, i in w2i.items()}, "out_dir": "out",
              "d_model": D_MODEL, "dim_ff": FF, "num_dec_layers": LAYERS, "torch_dtype": "float32"}
    if layout == "smt":            # SMT++ has no heads field: it always builds 4
        config.update(num_attn_heads=HEADS, use_flash_attn=True)
    return config


def write_reference_folder(folder: Path, layout: str = "smt", fmt: str = "safetensors",
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """config.json + model.safetensors (or pytorch_model.bin); returns the state written."""
    folder.mkdir(parents=True, exist_ok=True)
    w2i = vocabulary(seed)
    state = reference_state(layout, len(w2i), seed)
    (folder / "config.json").write_text(json.dumps(reference_config(w2i, layout)))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return state


# ---------------------------------------------------------------- the reference, by hand
def hand_table_1d(length: int, dim: int) -> torch.Tensor:
    """The reference decoder table from its formula, one value at a time in double precision."""
    out = torch.zeros(length, dim, dtype=torch.float64)
    for p in range(length):
        for i in range(dim // 2):
            f = math.exp(-(2 * i) / dim * math.log(10000.0))
            out[p, 2 * i], out[p, 2 * i + 1] = math.sin(p * f), math.cos(p * f)
    return out


def hand_table_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """[dim, height, width]: channels 2i/2i+1 (i < dim/4) the row, dim/2 + 2i/+1 the column,
    frequencies exp(-(2i)/dim * ln 10000)."""
    out = torch.zeros(dim, height, width, dtype=torch.float64)
    for i in range(dim // 4):
        f = math.exp(-(2 * i) / dim * math.log(10000.0))
        for y in range(height):
            for x in range(width):
                out[2 * i, y, x], out[2 * i + 1, y, x] = math.sin(y * f), math.cos(y * f)
                out[dim // 2 + 2 * i, y, x] = math.sin(x * f)
                out[dim // 2 + 2 * i + 1, y, x] = math.cos(x * f)
    return out


def _ln_channels_first(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return w[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + b[:, None, None]


def reference_encoder(s: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """Unpadded strided convolutions, as the reference's ConvNextModel runs them."""
    x = F.conv2d(image, s["encoder.embeddings.patch_embeddings.weight"],
                 s["encoder.embeddings.patch_embeddings.bias"], stride=4)
    x = _ln_channels_first(x, s["encoder.embeddings.layernorm.weight"], s["encoder.embeddings.layernorm.bias"])
    for st, depth in enumerate(DEPTHS):
        stage = f"encoder.encoder.stages.{st}"
        if st:
            x = _ln_channels_first(x, s[f"{stage}.downsampling_layer.0.weight"],
                                   s[f"{stage}.downsampling_layer.0.bias"])
            x = F.conv2d(x, s[f"{stage}.downsampling_layer.1.weight"],
                         s[f"{stage}.downsampling_layer.1.bias"], stride=2)
        for j in range(depth):
            p = f"{stage}.layers.{j}"
            y = F.conv2d(x, s[f"{p}.dwconv.weight"], s[f"{p}.dwconv.bias"], padding=3, groups=x.shape[1])
            y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), s[f"{p}.layernorm.weight"],
                             s[f"{p}.layernorm.bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, s[f"{p}.pwconv1.weight"], s[f"{p}.pwconv1.bias"])),
                         s[f"{p}.pwconv2.weight"], s[f"{p}.pwconv2.bias"])
            x = x + (s[f"{p}.layer_scale_parameter"] * y).permute(0, 3, 1, 2)
    return x


def _attention(s: dict, prefix: str, names: tuple, q_in, k_in, v_in, scale: float, causal: bool,
               heads: int):
    q, k, v = (F.linear(t, s[f"{prefix}.{n}.weight"], s[f"{prefix}.{n}.bias"])
               for t, n in zip((q_in, k_in, v_in), names[:3]))
    b, tq, d = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-1, -2) * scale
    if causal:
        logits = logits.masked_fill(torch.ones(tq, tq, dtype=torch.bool).triu(1), float("-inf"))
    out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, tq, d)
    return F.linear(out, s[f"{prefix}.{names[3]}.weight"], s[f"{prefix}.{names[3]}.bias"])


def reference_logits(s: dict[str, torch.Tensor], image: torch.Tensor, tokens: torch.Tensor,
                     layout: str = "smt", heads: int = HEADS) -> torch.Tensor:
    """Teacher-forced logits [1, T, V] of the reference model, from its own key names."""
    feats = reference_encoder(s, image)
    _, c, h, w = feats.shape
    keys = (feats + hand_table_2d(h, w, c).float()).flatten(2).transpose(1, 2)
    values = feats.flatten(2).transpose(1, 2)
    x = s["decoder.embedding.weight"][tokens] + hand_table_1d(tokens.shape[1], c).float()
    if layout == "smt":
        sa, ca, projs, ffn = "self_attn", "cross_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), "ffn"
        norms, scale = [f"norm_layers.{i}" for i in range(3)], (c // heads) ** -0.5
    else:
        sa, ca, projs, ffn = "input_attention", "cross_attention", ("lq", "lk", "lv", "out_proj"), "ffNet"
        norms, scale = [f"norm{i}" for i in (1, 2, 3)], 1.0
    for i in range(LAYERS):
        p = f"decoder.decoder.layers.{i}"
        ln = lambda t, n: F.layer_norm(t, (c,), s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"])  # noqa: E731
        x = ln(x + _attention(s, f"{p}.{sa}", projs, x, x, x, scale, True, heads), norms[0])
        x = ln(x + _attention(s, f"{p}.{ca}", projs, x, keys, values, scale, False, heads),
               norms[1])
        ff = F.linear(F.relu(F.linear(x, s[f"{p}.{ffn}.0.weight"], s[f"{p}.{ffn}.0.bias"])),
                      s[f"{p}.{ffn}.3.weight"], s[f"{p}.{ffn}.3.bias"])
        x = ln(x + ff, norms[2])
    if layout == "smt":
        return F.linear(x, s["decoder.vocab_projection.weight"], s["decoder.vocab_projection.bias"])
    return F.linear(F.relu(x), s["decoder.out_layer.weight"][..., 0], s["decoder.out_layer.bias"])
