"""What training builds, in one place, so that the probe measures exactly what trains.

`smt.train` and `smt.workload` (autotune's door into SMT) both call these functions and no
copies of them: the model's config for the data's largest image (`model_config`), the
DataLoader over prepared rows (`make_loader`), the scan that finds the data's extent and size
distribution (`scan_extent`), the synthetic worst-case batch (`synthetic_batch`) and the
process-wide torch settings (`configure_torch`). The training step itself is `smt.step`.
"""
from __future__ import annotations

import functools
import io
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Room for somewhat larger images and longer scores at prediction time than in training: the
# model's positional grids are sized this much above the largest training input.
HEADROOM = 1.25
# The encoder downsamples by 16: config sizes are whole multiples of it.
_SIZE_STEP = 16


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def model_config(preset: str, vocab_size: int, max_height_px: int, max_width_px: int,
                 max_seq_len_tokens: int) -> Any:
    """The `SMTConfig` training builds for data whose largest image is `max_height_px` x
    `max_width_px` (after reduction) and whose longest target is `max_seq_len_tokens`
    (<bos> and <eos> included), with HEADROOM for prediction on somewhat larger inputs."""
    from smt.config import SMTConfig
    return SMTConfig.preset(
        preset, vocab_size=vocab_size,
        max_height=_round_up(int(max_height_px * HEADROOM) + _SIZE_STEP, _SIZE_STEP),
        max_width=_round_up(int(max_width_px * HEADROOM) + _SIZE_STEP, _SIZE_STEP),
        max_seq_len=max(64, int(max_seq_len_tokens * HEADROOM) + _SIZE_STEP))


def configure_torch(num_threads: int | None = None) -> None:
    """Process-wide torch settings training runs with: TF32 matmuls on GPUs that have them,
    and `num_threads` intra-op threads (the `num_threads` setting; None keeps torch's own).
    The probe applies the same before timing a step. DataLoader workers run one thread each
    (torch sets that in every worker)."""
    import torch
    torch.set_float32_matmul_precision("high")
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))


# -- the data's extent --------------------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    """The largest image and longest target over the scanned rows, and their distribution."""
    max_height_px: int
    max_width_px: int
    max_seq_len_tokens: int              # <bos> and <eos> included
    rows: int                            # rows scanned and usable
    sampled_every: int                   # 1: every row; k: every k-th row of each split
    tokens: frozenset[str]
    # (height px, width px, tokens) per scanned row, in scan order: the size distribution.
    sizes: tuple[tuple[int, int, int], ...] = ()

    def median_size(self) -> tuple[int, int, int]:
        """Median height, width and token count (each on its own) of the scanned rows."""
        if not self.sizes:
            return self.max_height_px, self.max_width_px, self.max_seq_len_tokens
        return tuple(int(statistics.median_low(col)) for col in zip(*self.sizes))  # type: ignore[return-value]

    def quantile_size(self, q: float) -> tuple[int, int, int]:
        """Height, width and token count (each on its own) at quantile `q` of the scanned
        rows (0.5: the median; 1.0: the maximum)."""
        if not self.sizes:
            return self.max_height_px, self.max_width_px, self.max_seq_len_tokens
        out = []
        for col in zip(*self.sizes):
            ordered = sorted(col)
            out.append(int(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]))
        return out[0], out[1], out[2]


def _rows_of(split: Any, step: int) -> Iterator[tuple[Any, Any]]:
    """(image value, transcription) of every `step`-th row, images left undecoded."""
    if isinstance(split, list):
        for row in split[::step]:
            yield row.get("image"), row.get("transcription")
        return
    import datasets
    if step > 1:
        split = split.select(range(0, len(split), step))
    feature = split.features.get("image")
    if isinstance(feature, datasets.Image) and feature.decode:
        split = split.cast_column("image", datasets.Image(decode=False))
    for batch in split.select_columns(["image", "transcription"]).iter(batch_size=64):
        yield from zip(batch["image"], batch["transcription"])


def _image_size(image: Any) -> tuple[int, int] | None:
    """(height, width) from the image header; None for a missing or undecodable image."""
    from PIL import Image
    if not image:
        return None
    src = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
    try:
        with Image.open(src) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - an undecodable image is a row the preparation skips
        return None
    return h, w


def scan_extent(splits: Mapping[str, Any] | Iterable[tuple[str, Any]], fmt: str, *,
                max_tokens: int | None = None, max_rows: int | None = None) -> Extent:
    """Read image headers and tokenize transcriptions over all splits (a `DatasetDict`, or a
    mapping of split name to `datasets.Dataset` or list of row dicts).

    Rows the preparation would skip (bad transcription, undecodable image) are skipped. With
    `max_rows`, each split is sampled evenly so that about that many rows are read in all.
    """
    from smt.data.prepare import check_transcription
    from smt.tokenizer import tokenize
    items = list(splits.items()) if isinstance(splits, Mapping) else list(splits)
    total = sum(len(split) for _, split in items)
    step = max(1, math.ceil(total / max_rows)) if max_rows else 1
    tokens: set[str] = set()
    sizes: list[tuple[int, int, int]] = []
    for _, split in items:
        for image, text in _rows_of(split, step):
            kern, reason = check_transcription(text, fmt, max_tokens)
            if reason:
                continue
            hw = _image_size(image)
            if hw is None:
                continue
            toks = tokenize(kern, fmt)
            tokens.update(toks)
            sizes.append((hw[0], hw[1], len(toks) + 2))
    if not sizes:
        return Extent(0, 0, 0, 0, step, frozenset(), ())
    return Extent(max(s[0] for s in sizes), max(s[1] for s in sizes), max(s[2] for s in sizes),
                  len(sizes), step, frozenset(tokens), tuple(sizes))


def reduced(size_px: int, reduce_ratio: float) -> int:
    """A side after the preparation's resize (the same rounding as `smt.data.prepare`)."""
    return max(1, round(size_px * reduce_ratio))


# -- batches and loaders ------------------------------------------------------------------------

def synthetic_batch(batch_size: int, height_px: int, width_px: int, seq_len_tokens: int,
                    vocab_size: int, seed: int = 0) -> dict[str, Any]:
    """A worst-case training batch: every image `height_px` x `width_px`, every target
    `seq_len_tokens` long counting <bos> and <eos> (so the decoder reads seq_len - 1 tokens),
    no padding. Keys and dtypes as `smt.data.loader.collate` makes them."""
    import torch

    from smt.tokenizer import BOS, EOS, SPECIALS
    gen = torch.Generator().manual_seed(seed)
    n = max(2, seq_len_tokens)
    images = torch.rand(batch_size, 1, height_px, width_px, generator=gen)
    ids = torch.randint(len(SPECIALS), max(len(SPECIALS) + 1, vocab_size), (batch_size, n),
                        generator=gen)
    ids[:, 0] = SPECIALS.index(BOS)
    ids[:, -1] = SPECIALS.index(EOS)
    sizes = torch.tensor([[height_px, width_px]] * batch_size, dtype=torch.long)
    return {"images": images, "image_sizes": sizes, "input_ids": ids[:, :-1].contiguous(),
            "target_ids": ids[:, 1:].contiguous()}


def batch_to(batch: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """The batch with its tensors on `device` (other values, e.g. transcriptions, as they are)."""
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def make_loader(rows: Any, vocab: Any, fmt: str, *, batch_size: int, num_workers: int,
                shuffle: bool, augment: str = "none", teacher_noise: float = 0.0, seed: int = 0,
                persistent_workers: bool | None = None, resizable: bool = False) -> Any:
    """The DataLoader training reads `rows` (prepared rows) through: `ScoreDataset` with the
    padding `collate`, pinned memory where there is a GPU. `persistent_workers` defaults to
    keeping workers between epochs whenever there are any. `resizable`: a
    `smt.data.resizable.ResizableLoader`, whose workers can change while it runs."""
    import torch
    from torch.utils.data import DataLoader

    from smt.data.loader import ScoreDataset, collate
    aug = None
    if augment != "none":
        from smt.data.augment import Augment
        aug = Augment(augment, seed=seed)
    dataset = ScoreDataset(rows, vocab, fmt, augment=aug, teacher_noise=teacher_noise)
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    loader_cls: type = DataLoader
    if resizable:
        from smt.data.resizable import ResizableLoader
        loader_cls = ResizableLoader
    return loader_cls(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                      num_workers=num_workers,
                      collate_fn=functools.partial(collate, pad_id=vocab.pad_id),
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent_workers and num_workers > 0)


def collate_rows(rows: Any, indices: Iterable[int], vocab: Any, fmt: str,
                 teacher_noise: float = 0.0) -> dict[str, Any]:
    """One batch of the prepared `rows` at `indices`, exactly as the training loader makes it."""
    from smt.data.loader import ScoreDataset, collate
    dataset = ScoreDataset(rows, vocab, fmt, teacher_noise=teacher_noise)
    return collate([dataset[i] for i in indices], pad_id=vocab.pad_id)
