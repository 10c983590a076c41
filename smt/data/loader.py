"""The loader, SMT's side: the loader itself (autotune/probes/loader.py times it).

The torch side of the data: prepared rows -> tensors, and a collate that batches any sizes.

The reference SMT collate crashes for batch > 1 when sequences differ in length, which forces
batch size 1 and wastes the GPU. Here images are padded with white (1.0) to the largest
height and width in the batch and token sequences with `<pad>`; `image_sizes` keeps the real
sizes so the model can mask the padding if it wants to.

Teacher-forcing noise (replacing a fraction of the decoder's *input* tokens with random ones)
makes the decoder robust to its own mistakes at inference time. The dataset draws the noisy
copy, since it knows the vocabulary; the collate puts it into `input_ids` only, never into
`target_ids`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from smt import faults
from smt.tokenizer import SPECIALS, Vocab, tokenize


def image_to_array(image: Any) -> np.ndarray:
    """A datasets `Image` value (PIL, or {'bytes'|'path'} when not decoded) -> uint8 HxW gray."""
    from smt.data.images import to_gray8
    if isinstance(image, dict):
        import io
        src = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        image = Image.open(src)
    return to_gray8(image)


class ScoreDataset(Dataset):
    """Prepared rows (a `datasets.Dataset` with `image`, `transcription`) -> training items.

    Item: `image` float32 [1, H, W] in [0, 1] (1.0 = white), `ids` long [L] (`<bos>`...`<eos>`),
    `transcription` str, and `noisy_ids` when `teacher_noise` > 0.
    """

    def __init__(self, split: Any, vocab: Vocab, fmt: str = "bekern",
                 augment: Callable[[np.ndarray], np.ndarray] | None = None,
                 teacher_noise: float = 0.0, max_len: int | None = None) -> None:
        if not 0.0 <= teacher_noise < 1.0:
            raise ValueError(f"teacher_noise must be in [0, 1), got {teacher_noise!r}")
        self.split = split
        self.vocab = vocab
        self.fmt = fmt
        self.augment = augment
        self.teacher_noise = teacher_noise
        self.max_len = max_len
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rng"] = None        # each DataLoader worker draws its own noise
        return state

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            # torch seeds each worker differently; numpy's global state would not be.
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63)
        return self._rng

    def encode(self, transcription: str) -> list[int]:
        ids = self.vocab.encode(tokenize(transcription, self.fmt), add_special=True)
        if self.max_len is not None and len(ids) > self.max_len:
            ids = ids[: self.max_len - 1] + [self.vocab.eos_id]
        return ids

    def __getitem__(self, index: int) -> dict[str, Any]:
        faults.load_item()
        row = self.split[int(index)]
        img = image_to_array(row["image"])
        if self.augment is not None:
            img = self.augment(img)
        # astype copies: PIL's buffer is read-only, and torch must own writable memory.
        image = torch.from_numpy(img.astype(np.float32)).div_(255.0)[None]
        ids = torch.tensor(self.encode(row["transcription"]), dtype=torch.long)
        item = {"image": image, "ids": ids, "transcription": row["transcription"]}
        if self.teacher_noise > 0:
            item["noisy_ids"] = self._noisy(ids)
        return item

    def _noisy(self, ids: torch.Tensor) -> torch.Tensor:
        noisy = ids.clone()
        # Never replace <bos> (the decoder's first input); draw only real tokens.
        hit = self.rng.random(len(ids)) < self.teacher_noise
        hit[0] = False
        n = int(hit.sum())
        if n and len(self.vocab) > len(SPECIALS):
            repl = self.rng.integers(len(SPECIALS), len(self.vocab), size=n)
            noisy[torch.from_numpy(hit)] = torch.from_numpy(repl).to(torch.long)
        return noisy


def collate(items: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Pad a list of items into a batch (see CONTRACTS.md: `images`, `image_sizes`,
    `input_ids`, `target_ids`, `transcriptions`)."""
    if not items:
        raise ValueError("collate needs at least one item")
    b = len(items)
    sizes = torch.tensor([tuple(it["image"].shape[-2:]) for it in items], dtype=torch.long)
    hmax, wmax = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    images = torch.ones((b, 1, hmax, wmax), dtype=torch.float32)
    for i, it in enumerate(items):
        h, w = it["image"].shape[-2:]
        images[i, :, :h, :w] = it["image"]
    t = max(len(it["ids"]) for it in items) - 1
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    target_ids = torch.full((b, t), pad_id, dtype=torch.long)
    for i, it in enumerate(items):
        ids = it["ids"]
        src = it.get("noisy_ids", ids)
        n = len(ids) - 1
        input_ids[i, :n] = src[:-1]
        target_ids[i, :n] = ids[1:]
    return {"images": images, "image_sizes": sizes, "input_ids": input_ids,
            "target_ids": target_ids, "transcriptions": [it["transcription"] for it in items]}
