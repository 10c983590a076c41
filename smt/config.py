"""Model configuration: one dataclass, validated at construction, plus named presets.

The config is saved as JSON beside every checkpoint (`to_dict` / `from_dict` / `save` / `load`),
so a checkpoint can be rebuilt and decoded without the training code's flags.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The encoder's stem divides by 4 and each of the two later stages by 2 more: 4 * 2 * 2 = 16.
# A fixed number of stages keeps the feature grid (and so the 2D positional grid) at /16.
ENCODER_STAGES = 3
DOWNSAMPLE = 16
POSITIONAL_KINDS = ("ours", "reference")
GRID_ROUNDINGS = ("ceil", "floor")

# The most each size may be: one home for the bounds of the SMT family, checked at construction
# (so by smt.convert before any tensor is built, and by every training config). Each is far
# above any published SMT (vocabularies of hundreds to a few thousand tokens, 1512 tokens,
# d_model 256, 8 layers, A4 at 300 dpi) and far below what would exhaust a machine's RAM before
# the model exists: a typo or a hostile 1e9 is one line naming the field, not a huge allocation.
MAX_SIZES: dict[str, int] = {
    "vocab_size": 1 << 20,      # embedding + head rows: 1 Mi x d_model 256 is 2 GiB of float32
    "max_height": 1 << 15,      # 32768 px: an A0 sheet at 300 dpi fits; the 2D table is /16 per side
    "max_width": 1 << 15,
    "max_seq_len": 1 << 16,     # 43x the reference's page limit; the 1D table has this many rows
    "in_channels": 4,           # gray, RGB or RGBA
    "d_model": 1 << 13,
    "n_heads": 1 << 8,
    "ff_dim": 1 << 16,
    "n_layers": 1 << 8,
}
MAX_ENCODER_WIDTH = MAX_SIZES["d_model"]     # the last width is d_model, so the same bound
MAX_ENCODER_DEPTH = 1 << 8


@dataclass(frozen=True)
class SMTConfig:
    # Output classes; the real value comes from the vocabulary (181 for GrandStaff bekern).
    vocab_size: int = 181
    # Largest image (pixels, after reduce_ratio) the model accepts. Only bounds the positional
    # grid (max_height/16 x max_width/16); the reference uses an A4 page at 300 dpi.
    max_height: int = 3508
    max_width: int = 2480
    # Longest token sequence including <bos>/<eos>; the 1D positional table has this many rows.
    # 1512 is the reference's page-level limit.
    max_seq_len: int = 1512
    # Grayscale scores: colour adds nothing but 3x the input memory.
    in_channels: int = 1
    # ConvNeXt stage widths and depths of the reference SMT (ConvNeXt-T sizes halved, 3 stages).
    encoder_widths: tuple[int, ...] = (64, 128, 256)
    encoder_depths: tuple[int, ...] = (3, 3, 9)
    # Decoder width; must equal the last encoder width (the memory is used as is, no projection).
    d_model: int = 256
    # 4 heads of 64 channels, as in the reference.
    n_heads: int = 4
    # The reference keeps the feed-forward as narrow as d_model: most capacity is in attention.
    ff_dim: int = 256
    # 8 decoder layers: the reference depth; about half the 10.9 M parameters live here.
    n_layers: int = 8
    # Reference value; the debug preset sets 0 so that a tiny model can overfit quickly.
    dropout: float = 0.1
    # Special ids fixed by the tokenizer contract (docs/CONTRACTS.md): specials come first.
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    # The options below exist so that checkpoints converted from the reference implementations
    # (smt.convert) compute exactly what they were trained with; our own runs keep the defaults.
    # Fixed sin/cos tables (derived, never saved): "ours" or "reference" (smt.model.positional
    # says how they differ). A model decodes correctly only with the tables it was trained with.
    positional: str = "ours"
    # Feature-grid cells that only partly cover an image whose side is not a multiple of 16:
    # "ceil" keeps them (no pixel is lost); "floor" drops them, as the reference's unpadded
    # strided convolutions do.
    grid_rounding: str = "ceil"
    # Attention logit scale; None is 1/sqrt(head_dim). SMT++ checkpoints were trained unscaled (1.0).
    attention_scale: float | None = None
    # SMT++ applies a ReLU to the decoder output before the vocabulary projection.
    head_relu: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists back; keep tuples so the frozen config stays hashable.
        for name in ("encoder_widths", "encoder_depths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"SMTConfig.{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"SMTConfig.{name} must be >= {minimum}, got {value}")
            if value > MAX_SIZES[name]:
                raise ValueError(f"SMTConfig.{name} must be <= {MAX_SIZES[name]} (the most an SMT "
                                 f"model takes), got {value}")

        positive_int("vocab_size", 4)
        positive_int("max_height", DOWNSAMPLE)
        positive_int("max_width", DOWNSAMPLE)
        positive_int("max_seq_len", 2)
        positive_int("in_channels")
        positive_int("d_model")
        positive_int("n_heads")
        positive_int("ff_dim")
        positive_int("n_layers")
        for name in ("encoder_widths", "encoder_depths"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != ENCODER_STAGES:
                raise ValueError(
                    f"SMTConfig.{name} must have {ENCODER_STAGES} entries (stem /4 and two /2 "
                    f"stages give the /16 feature grid), got {value!r}"
                )
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise ValueError(f"SMTConfig.{name} must hold positive ints, got {value!r}")
            most = MAX_ENCODER_WIDTH if name == "encoder_widths" else MAX_ENCODER_DEPTH
            if max(value) > most:
                raise ValueError(f"SMTConfig.{name} entries must be <= {most} (the most an SMT "
                                 f"model takes), got {value!r}")
        if self.encoder_widths[-1] != self.d_model:
            raise ValueError(
                f"SMTConfig.encoder_widths[-1] ({self.encoder_widths[-1]}) must equal "
                f"d_model ({self.d_model}): the encoder output is the decoder's memory"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"SMTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_model % 4:
            raise ValueError(
                f"SMTConfig.d_model ({self.d_model}) must be a multiple of 4: the 2D positional "
                "encoding gives half the channels to rows and half to columns, each as sin/cos pairs"
            )
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not (
            0.0 <= float(self.dropout) < 1.0
        ):
            raise ValueError(f"SMTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for name, value in ids.items():
            if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value < self.vocab_size
            ):
                raise ValueError(
                    f"SMTConfig.{name} must be an int in [0, vocab_size={self.vocab_size}), got {value!r}"
                )
        if len(set(ids.values())) != 3:
            raise ValueError(f"SMTConfig pad_id, bos_id, eos_id must be distinct, got {ids}")
        self._validate_reference_options()

    def _validate_reference_options(self) -> None:
        for name, allowed in (("positional", POSITIONAL_KINDS), ("grid_rounding", GRID_ROUNDINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SMTConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        scale = self.attention_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not 0.0 < float(scale) < float("inf")):
            raise ValueError(f"SMTConfig.attention_scale must be a positive number or null, got {scale!r}")
        if not isinstance(self.head_relu, bool):
            raise ValueError(f"SMTConfig.head_relu must be true or false, got {self.head_relu!r}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid_height(self) -> int:
        """Rows of the encoder's feature grid for the largest image."""
        return -(-self.max_height // DOWNSAMPLE)

    @property
    def grid_width(self) -> int:
        return -(-self.max_width // DOWNSAMPLE)

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **changes: Any) -> "SMTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **changes})

    def replace(self, **changes: Any) -> "SMTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("encoder_widths", "encoder_depths"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SMTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SMTConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        from autotune.atomic import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SMTConfig":
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not a JSON model config ({exc})") from None
            except RecursionError:
                raise ValueError(f"{path}: nested too deeply to be a model config") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a model config must be a JSON object")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None


# Named presets: plain field dicts, so `SMTConfig.preset(name, **changes)` can override any of them.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference SMT architecture: ~10.9 M parameters at vocab 181.
    "paper": {},
    # A half-width model (~1.8 M parameters at vocab 181) for small GPUs and CPU runs that still learn.
    "small": {
        "encoder_widths": (32, 64, 128),
        "encoder_depths": (2, 2, 6),
        "d_model": 128,
        "n_heads": 4,
        "ff_dim": 256,
        "n_layers": 4,
    },
    # Tiny and fast: tests and smoke runs train it in seconds on a CPU. No dropout, so it can
    # overfit a handful of examples; sizes bounded to what the synthetic systems need.
    "debug": {
        "max_height": 512,
        "max_width": 2048,
        "max_seq_len": 512,
        "encoder_widths": (8, 16, 32),
        "encoder_depths": (1, 1, 1),
        "d_model": 32,
        "n_heads": 2,
        "ff_dim": 64,
        "n_layers": 2,
        "dropout": 0.0,
    },
}
