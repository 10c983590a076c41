"""The reference checkpoints' parameter names, mapped onto `SMTModel`'s.

Two layouts are published under the name `SMTModelForCausalLM`, both with the same Hugging Face
`ConvNextModel` encoder:

- "smt" (antoniorv6/SMT, the full-page models): decoder `decoder.decoder.layers.N.self_attn`
  / `cross_attn` (`q_proj`, `k_proj`, `v_proj`, `out_proj`), `ffn.0` / `ffn.3`,
  `norm_layers.0-2`, head `decoder.vocab_projection`.
- "smt++" (SMT-plusplus, the system-level models): `input_attention` / `cross_attention`
  (`lq`, `lk`, `lv`, `out_proj`), `ffNet.0` / `ffNet.3`, `norm1-3`, head `decoder.out_layer`
  (a kernel-1 Conv1d); its attention is unscaled and a ReLU precedes the head.

Each rule maps one reference name to ours or marks it known-but-unused: the encoder's pooled
output norm (`encoder.layernorm`, which neither reference reads) and positional tables that
an older export may have saved (ours are rebuilt from the config).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from autotune.errors import UserError

Target = Callable[[re.Match[str]], str | None]
W = r"(weight|bias)"

_ENCODER: list[tuple[str, Target]] = [
    (rf"encoder\.embeddings\.patch_embeddings\.{W}", lambda m: f"encoder.stem.{m[1]}"),
    (rf"encoder\.embeddings\.layernorm\.{W}", lambda m: f"encoder.stem_norm.{m[1]}"),
    # Stage 0 has no downsampling layer, so stage s's is our down_*[s - 1].
    (rf"encoder\.encoder\.stages\.([1-9]\d*)\.downsampling_layer\.0\.{W}",
     lambda m: f"encoder.down_norms.{int(m[1]) - 1}.{m[2]}"),
    (rf"encoder\.encoder\.stages\.([1-9]\d*)\.downsampling_layer\.1\.{W}",
     lambda m: f"encoder.down_convs.{int(m[1]) - 1}.{m[2]}"),
    (rf"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.{W}",
     lambda m: f"encoder.stages.{m[1]}.{m[2]}.dwconv.{m[3]}"),
    (rf"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.{W}",
     lambda m: f"encoder.stages.{m[1]}.{m[2]}.norm.{m[3]}"),
    (rf"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv([12])\.{W}",
     lambda m: f"encoder.stages.{m[1]}.{m[2]}.pw{m[3]}.{m[4]}"),
    (r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter",
     lambda m: f"encoder.stages.{m[1]}.{m[2]}.gamma"),
    (rf"encoder\.layernorm\.{W}", lambda m: None),
    (r"decoder\.embedding\.weight", lambda m: "embedding.weight"),
]

_PROJ = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "out_proj",
         "lq": "q_proj", "lk": "k_proj", "lv": "v_proj"}
_LAYER = r"decoder\.decoder\.layers\.(\d+)"

_SMT: list[tuple[str, Target]] = _ENCODER + [
    (rf"{_LAYER}\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|out_proj)\.{W}",
     lambda m: f"layers.{m[1]}.{m[2]}.{m[3]}.{m[4]}"),
    (rf"{_LAYER}\.ffn\.([03])\.{W}", lambda m: f"layers.{m[1]}.ff{1 if m[2] == '0' else 2}.{m[3]}"),
    (rf"{_LAYER}\.norm_layers\.([012])\.{W}", lambda m: f"layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}"),
    (rf"decoder\.vocab_projection\.{W}", lambda m: f"head.{m[1]}"),
    (r"(decoder\.position_encoding|pos2D)\.pe", lambda m: None),
]

_SMTPP: list[tuple[str, Target]] = _ENCODER + [
    (rf"{_LAYER}\.(input_attention|cross_attention)\.(lq|lk|lv|out_proj)\.{W}",
     lambda m: f"layers.{m[1]}.{'self_attn' if m[2] == 'input_attention' else 'cross_attn'}"
               f".{_PROJ[m[3]]}.{m[4]}"),
    (rf"{_LAYER}\.ffNet\.([03])\.{W}", lambda m: f"layers.{m[1]}.ff{1 if m[2] == '0' else 2}.{m[3]}"),
    (rf"{_LAYER}\.norm([123])\.{W}", lambda m: f"layers.{m[1]}.norm{m[2]}.{m[3]}"),
    (rf"decoder\.out_layer\.{W}", lambda m: f"head.{m[1]}"),
    (r"(decoder\.positional_1D|positional_2D)\.pe", lambda m: None),
]

LAYOUTS: dict[str, list[tuple[re.Pattern[str], Target]]] = {
    name: [(re.compile(p), t) for p, t in rules] for name, rules in (("smt", _SMT), ("smt++", _SMTPP))
}


@dataclass(frozen=True)
class Mapped:
    """Our state dict built from a reference one; `sources[ours]` names the reference key."""
    state: dict[str, torch.Tensor]
    sources: dict[str, str]
    dropped: list[str]


def detect_layout(keys: list[str], where: str) -> str:
    if any(".input_attention." in k for k in keys) or "decoder.out_layer.weight" in keys:
        return "smt++"
    if any(".self_attn." in k for k in keys) or "decoder.vocab_projection.weight" in keys:
        return "smt"
    raise UserError(f"{where}: not an SMTModelForCausalLM checkpoint (no decoder attention or "
                    f"output layer among its {len(keys)} keys)")


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved from the reference's Lightning module has every key under `model.`."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def map_keys(state: dict[str, torch.Tensor], layout: str, where: str) -> Mapped:
    """Rename every reference key; the first one no rule knows is refused by name."""
    rules = LAYOUTS[layout]
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: list[str] = []
    for key in sorted(state):
        for pattern, target in rules:
            m = pattern.fullmatch(key)
            if m:
                break
        else:
            raise UserError(f"{where}: key {key!r} has no counterpart in our model (layout {layout})")
        ours = target(m)
        if ours is None:
            dropped.append(key)
            continue
        tensor = state[key]
        if layout == "smt++" and ours == "head.weight" and tensor.dim() == 3 and tensor.shape[-1] == 1:
            tensor = tensor[..., 0]         # Conv1d(kernel 1) -> Linear
        out[ours], sources[ours] = tensor, key
    return Mapped(out, sources, dropped)


def check_complete(mapped: Mapped, expected: dict[str, torch.Tensor], where: str) -> None:
    """Every one of our parameters has a source of the right shape; nothing extra."""
    for ours, tensor in sorted(expected.items()):
        if ours not in mapped.state:
            raise UserError(f"{where}: nothing in the checkpoint maps onto our {ours!r} "
                            "(an incomplete or different checkpoint)")
        got = mapped.state[ours]
        if tuple(got.shape) != tuple(tensor.shape):
            raise UserError(f"{where}: key {mapped.sources[ours]!r} has shape {list(got.shape)}, "
                            f"expected {list(tensor.shape)} (our {ours!r})")
    extra = sorted(set(mapped.state) - set(expected))
    if extra:
        raise UserError(f"{where}: key {mapped.sources[extra[0]]!r} maps onto {extra[0]!r}, which "
                        "this model does not have (more stages or layers than config.json says?)")


def encoder_shape(state: dict[str, torch.Tensor], where: str) -> tuple[int, list[int], list[int]]:
    """(in_channels, stage widths, stage depths) read from the encoder's tensors: the reference
    fixes them in code, not in config.json."""
    stem = state.get("encoder.embeddings.patch_embeddings.weight")
    if stem is None or stem.dim() != 4:
        raise UserError(f"{where}: no 4-D encoder.embeddings.patch_embeddings.weight")
    depth: dict[int, int] = {}
    for key in state:
        m = re.fullmatch(r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.weight", key)
        if m:
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    stages = sorted(depth)
    if stages != list(range(len(stages))) or not stages:
        raise UserError(f"{where}: encoder stages {stages} are not numbered 0..N-1")
    widths = [int(state[f"encoder.encoder.stages.{s}.layers.0.dwconv.weight"].shape[0]) for s in stages]
    return int(stem.shape[1]), widths, [depth[s] for s in stages]


def decoder_layers(state: dict[str, torch.Tensor]) -> int:
    found = [int(m[1]) for k in state if (m := re.match(rf"{_LAYER}\.", k))]
    return max(found) + 1 if found else 0
