"""Reading a reference checkpoint folder (or fetching one from the hub) without running its code.

A folder holds `config.json` (the reference's `SMTConfig`: sizes, `w2i` / `i2w`) and
`model.safetensors` or `pytorch_model.bin`. Safetensors is plain tensor data; a `.bin` is read
with `torch.load(weights_only=True)`, which refuses any pickle that would build objects other
than tensors. Nothing from the download is imported or executed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.errors import UserError
from autotune.profile import parse_json_file

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ReferenceConfig:
    """The fields of the reference's config.json that shape the model (pixel and token limits,
    widths), plus its vocabulary as tokens in id order."""
    maxh: int
    maxw: int
    maxlen: int
    out_categories: int
    d_model: int
    dim_ff: int
    num_dec_layers: int
    num_heads: int | None       # only the "smt" layout records it (SMT++ fixes 4 heads)
    in_channels: int
    tokens: list[str]


def resolve(src: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder as is, or a hub model id downloaded (config and weights only) into the
    hub cache. Returns (folder, commit of the download or None)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{src}: expected a folder with {CONFIG_FILE} and {' or '.join(WEIGHT_FILES)}")
        return path, None
    if not _HUB_ID.match(src):
        raise UserError(f"{src}: no such folder, and not a hub model id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("downloading needs huggingface_hub: pip install 'smt-autotune[hub]'") from None
    try:
        folder = Path(snapshot_download(repo_id=src, revision=revision,
                                        allow_patterns=[CONFIG_FILE, *WEIGHT_FILES]))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot download {src}: {first[:300]}") from exc
    return folder, folder.name


# Which of our SMTConfig sizes each reference key becomes: its bound (smt.config.MAX_SIZES) is
# checked here, on the key the user sees, before any weight is read or tensor built.
OUR_FIELD = {"maxh": "max_height", "maxw": "max_width", "maxlen": "max_seq_len",
             "out_categories": "vocab_size", "d_model": "d_model", "dim_ff": "ff_dim",
             "num_dec_layers": "n_layers", "num_attn_heads": "n_heads", "attn_heads": "n_heads",
             "in_channels": "in_channels"}


def _int(config: dict[str, Any], name: str, where: str, default: int | None = None) -> int:
    from smt.config import MAX_SIZES

    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: {name} must be a positive integer, got {value!r}")
    most = MAX_SIZES[OUR_FIELD[name]]
    if value > most:
        raise UserError(f"{where}: {name} = {value} is above {most}, the most an SMT model takes "
                        f"(our {OUR_FIELD[name]})")
    return value


def _id(idx: Any) -> int | None:
    """A vocabulary id: an int, or a string of ASCII digits ("²" and "1.5" are not ids)."""
    if isinstance(idx, int) and not isinstance(idx, bool):
        return idx
    if isinstance(idx, str) and idx.isascii() and idx.isdigit():
        return int(idx)
    return None


def _tokens(config: dict[str, Any], where: str) -> list[str]:
    """Tokens in id order from w2i (and i2w, which must agree); ids must be 0..n-1."""
    w2i, i2w = config.get("w2i"), config.get("i2w")
    if not isinstance(w2i, dict) or not w2i:
        raise UserError(f"{where}: no w2i vocabulary (token -> id)")
    by_id: dict[int, str] = {}
    for token, idx in w2i.items():
        i = _id(idx)
        if i is None:
            raise UserError(f"{where}: w2i[{token!r}] = {idx!r} is not an integer id")
        if i in by_id:
            raise UserError(f"{where}: w2i gives id {i} to both {by_id[i]!r} and {token!r}")
        by_id[i] = token
    if sorted(by_id) != list(range(len(by_id))):
        gap = next(i for i in range(len(by_id) + 1) if i not in by_id)
        raise UserError(f"{where}: w2i ids are not 0..{len(by_id) - 1} (id {gap} is missing)")
    if isinstance(i2w, dict) and i2w:
        for idx, token in i2w.items():
            i = _id(idx)
            if i is None:
                raise UserError(f"{where}: i2w key {idx!r} is not an integer id")
            if by_id.get(i) != token:
                raise UserError(f"{where}: i2w[{idx!r}] = {token!r} but w2i says "
                                f"{by_id.get(i) if i is not None else 'no such id'!r}")
    return [by_id[i] for i in range(len(by_id))]


def read_config(folder: Path) -> ReferenceConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_FILE} (the reference's model config with w2i/i2w)")
    data = parse_json_file(path, "model config")     # one line for unreadable or over-deep JSON
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object")
    where = str(path)
    heads = data.get("num_attn_heads", data.get("attn_heads"))
    return ReferenceConfig(
        maxh=_int(data, "maxh", where), maxw=_int(data, "maxw", where),
        maxlen=_int(data, "maxlen", where), out_categories=_int(data, "out_categories", where),
        d_model=_int(data, "d_model", where, 256), dim_ff=_int(data, "dim_ff", where, 256),
        num_dec_layers=_int(data, "num_dec_layers", where, 8),
        num_heads=None if heads is None else _int(data, "num_attn_heads" if "num_attn_heads" in data
                                                  else "attn_heads", where),
        in_channels=_int(data, "in_channels", where, 1), tokens=_tokens(data, where))


def load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict, as float32 CPU tensors, from the first weight file present."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise UserError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            from smt.checkpoint import load_weights_only

            state = load_weights_only(path, "cpu", f"cannot load {path} as plain tensors")
    except ImportError:
        raise UserError("reading .safetensors needs safetensors: pip install 'smt-autotune[hub]'") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad or hostile file is the file's fault
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {path} as plain tensors: {first[:300]}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path
