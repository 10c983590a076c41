"""Tiny rendered scores for the training tests: one-measure systems, half size, ~50 tokens.

Small enough that the `debug` model memorises a handful in seconds on a CPU, real enough that
they go through the same renderer, tokenizer, loader and model as the embedded dataset.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

ONE_MEASURE = dict(measures_min=1, measures_max=1, chord_p=0.0, tie_p=0.0, accidental_p=0.0)


def tiny_rows(n: int, seed: int = 0, scale: float = 0.5) -> list[dict[str, Any]]:
    from smt.data.kern_gen import GenConfig, generate
    from smt.data.render import render

    cfg = GenConfig(**ONE_MEASURE)
    rows = []
    for s in range(seed, seed + n):
        kern = generate(s, "system", cfg)
        img = Image.open(io.BytesIO(render(kern, "system", seed=s))).convert("L")
        img = img.resize((max(16, round(img.width * scale)), max(16, round(img.height * scale))))
        rows.append({"image": img, "transcription": kern})
    return rows


def tiny_dataset_dict(path: Path, n_train: int = 8, n_val: int = 4, n_test: int = 2) -> Path:
    """A save_to_disk DatasetDict with `image` and `transcription`, like a user's folder."""
    import datasets

    rows = tiny_rows(n_train + n_val + n_test)
    splits = {"train": rows[:n_train], "val": rows[n_train:n_train + n_val],
              "test": rows[n_train + n_val:]}
    dd = datasets.DatasetDict({
        name: datasets.Dataset.from_list(part).cast_column("image", datasets.Image())
        for name, part in splits.items()})
    dd.save_to_disk(str(path))
    return path
