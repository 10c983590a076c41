"""The Sheet Music Transformer: ConvNeXt encoder + Transformer decoder, with batched greedy
decoding over a key/value cache and an uncached reference decoder to check it against."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smt.config import SMTConfig
from smt.model.decoder import DecoderLayer
from smt.model.encoder import ConvNeXtEncoder, valid_extent
from smt.model.estimate import MemoryEstimate, estimate_flops, estimate_memory
from smt.model.greedy import greedy_decode
from smt.model.positional import TABLES_1D, TABLES_2D

# Padding for images whose sides are not multiples of 16: paper white, like the collate's.
PAD_VALUE = 1.0


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Decoding never uses dropout; the caller's mode (training, mid-epoch) comes back after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@dataclass
class Memory:
    """The encoded images as the decoder reads them: keys carry the 2D position, values not
    (as in the reference SMT). mask [B, 1, 1, S] is True on positions inside each image, or
    None when every position is."""
    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None


class SMTModel(nn.Module):
    def __init__(self, config: SMTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvNeXtEncoder(config)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.n_heads, config.ff_dim, config.dropout,
                         None if config.attention_scale is None else float(config.attention_scale))
            for _ in range(config.n_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        # Not persistent: derived from the config, so checkpoints stay small and exact.
        table = TABLES_1D[config.positional]
        self.register_buffer("positions", table(config.max_seq_len, config.d_model), persistent=False)

    # ------------------------------------------------------------------ inputs
    def _check_images(self, images: torch.Tensor, image_sizes: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate, pad to a multiple of 16 with white, and return the sizes the encoder masks
        with (None when every image fills the padded tensor, so no masking is needed)."""
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != cfg.in_channels:
            raise ValueError(f"images must be [B, {cfg.in_channels}, H, W], got {list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        b, _, h, w = images.shape
        if h > cfg.max_height or w > cfg.max_width:
            raise ValueError(
                f"image of {h}x{w} px (HxW) is larger than the model's maximum "
                f"{cfg.max_height}x{cfg.max_width} (SMTConfig.max_height/max_width): lower the "
                "reduce ratio or build the model with larger limits"
            )
        if image_sizes is None:
            sizes = torch.tensor([[h, w]], device=images.device).expand(b, 2)
        else:
            sizes = torch.as_tensor(image_sizes, device=images.device)
            if sizes.shape != (b, 2):
                raise ValueError(f"image_sizes must be [B={b}, 2], got {list(sizes.shape)}")
            sizes = sizes.long()
            if (sizes < 1).any() or (sizes[:, 0] > h).any() or (sizes[:, 1] > w).any():
                raise ValueError(f"image_sizes must lie within the {h}x{w} batch tensor, got {sizes.tolist()}")
        stride = self.encoder.downsample
        if cfg.grid_rounding == "floor" and bool((sizes < stride).any()):
            raise ValueError(f"with grid_rounding='floor' every image needs at least {stride} px "
                             f"per side (a smaller one has no whole feature cell), got {sizes.tolist()}")
        ph, pw = -h % stride, -w % stride
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), value=PAD_VALUE)
        if bool((sizes[:, 0] == h + ph).all() and (sizes[:, 1] == w + pw).all()):
            return images, None
        return images, sizes

    def _check_ids(self, input_ids: torch.Tensor, batch: int) -> None:
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(f"input_ids must be [B={batch}, T], got {list(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens exceeds SMTConfig.max_seq_len="
                f"{self.config.max_seq_len}"
            )

    # ------------------------------------------------------------------ model
    def encode(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> Memory:
        images, sizes = self._check_images(images, image_sizes)
        features = self.encoder(images, sizes)                      # [B, d, H/16, W/16]
        b, d, gh, gw = features.shape
        values = features.flatten(2).transpose(1, 2)                # [B, S, d]
        table = TABLES_2D[self.config.positional]
        keys = values + table(gh, gw, d, device=values.device, dtype=values.dtype)
        mask = None
        if sizes is not None:
            extent = valid_extent(sizes, self.encoder.downsample, self.config.grid_rounding)
            rows = torch.arange(gh, device=sizes.device)[None, :] < extent[:, 0:1]
            cols = torch.arange(gw, device=sizes.device)[None, :] < extent[:, 1:2]
            mask = (rows[:, :, None] & cols[:, None, :]).reshape(b, 1, 1, gh * gw)
        return Memory(keys, values, mask)

    def decode(self, input_ids: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Teacher-forced decoding of whole sequences: logits [B, T, V]."""
        self._check_ids(input_ids, memory.keys.shape[0])
        x = self.embedding(input_ids) + self.positions[: input_ids.shape[1]]
        for layer in self.layers:
            x = layer(x, memory.keys, memory.values, memory.mask)
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output [..., d] -> vocabulary logits [..., V]."""
        if self.config.head_relu:
            x = F.relu(x)
        return self.head(self.dropout(x))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, C, H, W] in [0, 1] (padding white), input_ids [B, T] starting with <bos>,
        image_sizes [B, 2] (h, w) inside the padding (optional) -> logits [B, T, V]."""
        return self.decode(input_ids, self.encode(images, image_sizes))

    def loss(self, logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the non-<pad> targets."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target_ids.reshape(-1),
                               ignore_index=self.config.pad_id)

    # ------------------------------------------------------------------ decoding
    def _max_len(self, max_len: int | None) -> int:
        limit = self.config.max_seq_len - 1                          # <bos> takes position 0
        if max_len is None:
            return limit
        if not 1 <= max_len <= limit:
            raise ValueError(f"max_len must be in [1, max_seq_len - 1 = {limit}], got {max_len}")
        return max_len

    def generate(self, images: torch.Tensor, max_len: int | None = None,
                 image_sizes: torch.Tensor | None = None, *, compile: bool = False
                 ) -> list[list[int]]:
        """Batched greedy decoding with a key/value cache (`smt.model.greedy`). Returns, per
        image, the generated ids without <bos> and <eos>; a row stops at its <eos> or after
        max_len tokens (default max_seq_len - 1). Finished rows leave the batch, so they cost
        nothing afterwards. Runs in eval mode (no dropout) and restores the previous mode.
        compile=True runs the decoder step through `torch.compile` (eager if that fails); off
        by default: on a CPU the compile costs more than a validation's decoding saves."""
        max_len = self._max_len(max_len)
        with _eval_mode(self), torch.inference_mode():
            return self.greedy_cached(self.encode(images, image_sizes), max_len, compile=compile)

    @torch.no_grad()
    def generate_uncached(self, images: torch.Tensor, max_len: int | None = None,
                          image_sizes: torch.Tensor | None = None) -> list[list[int]]:
        """The reference SMT's way: encode once, then re-run the whole decoder over the whole
        prefix for every new token (quadratic in length). Same result as `generate`; kept to
        test and benchmark it against."""
        max_len = self._max_len(max_len)
        with _eval_mode(self):
            return self.greedy_uncached(self.encode(images, image_sizes), max_len)

    def greedy_cached(self, memory: Memory, max_len: int, *, compile: bool = False
                      ) -> list[list[int]]:
        """The decoding loop of `generate` on already encoded images (call under
        inference_mode/no_grad, in eval mode)."""
        return greedy_decode(self, memory.keys, memory.values, memory.mask, max_len,
                             compile=compile)

    def greedy_uncached(self, memory: Memory, max_len: int) -> list[list[int]]:
        """The decoding loop of `generate_uncached` on already encoded images."""
        b = memory.keys.shape[0]
        prefix = torch.full((b, 1), self.config.bos_id, dtype=torch.long, device=memory.keys.device)
        finished = torch.zeros(b, dtype=torch.bool, device=prefix.device)
        for _ in range(max_len):
            token = self.decode(prefix, memory)[:, -1].argmax(dim=-1)
            token = torch.where(finished, self.config.eos_id, token)
            finished |= token == self.config.eos_id
            prefix = torch.cat([prefix, token[:, None]], dim=1)
            if bool(finished.all()):
                break
        outputs = []
        for row in prefix[:, 1:].tolist():
            cut = row.index(self.config.eos_id) if self.config.eos_id in row else len(row)
            outputs.append(row[:cut])
        return outputs

    # ------------------------------------------------------------------ sizes
    def num_params(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def estimate_memory(self, batch_size: int, height: int, width: int, seq_len: int,
                        precision: str = "32") -> MemoryEstimate:
        return estimate_memory(self.config, batch_size, height, width, seq_len, precision)

    def estimate_flops(self, batch_size: int, height: int, width: int, seq_len: int) -> int:
        return estimate_flops(self.config, batch_size, height, width, seq_len)
