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


# Flags that make a `debug` run memorise a couple of systems quickly and deterministically.
FAST = ["--preset", "debug", "--num-workers", "0", "--precision", "32-true", "--teacher-noise", "0",
        "--lr", "3e-3", "--patience", "0"]

_TRAINED: dict[str, Path] = {}


def trained_run(steps: int = 150) -> Path:
    """A finished `smt.train` run on 2 tiny systems (trained once per test session).

    Runs in its own cache root and output folder under a session temp dir, so tests that
    share it only read it; tests that change a run copy it first.
    """
    if "run" in _TRAINED:
        return _TRAINED["run"]
    import os
    import tempfile

    from smt.train import main

    root = Path(tempfile.mkdtemp(prefix="smt-trained-"))
    data = tiny_dataset_dict(root / "tiny", n_train=2, n_val=2, n_test=1)
    old = os.environ.get("SMT_AUTOTUNE_CACHE")
    os.environ["SMT_AUTOTUNE_CACHE"] = str(root / "cache")
    try:
        code = main(["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", str(steps),
                     "--val-every", str(steps // 2), "--ckpt-every", str(steps // 3),
                     "--out", str(root / "run")])
    finally:
        if old is None:
            os.environ.pop("SMT_AUTOTUNE_CACHE", None)
        else:
            os.environ["SMT_AUTOTUNE_CACHE"] = old
    assert code == 0
    _TRAINED.update(run=root / "run", data=data, cache=root / "cache")
    return _TRAINED["run"]


def trained_paths() -> dict[str, Path]:
    trained_run()
    return dict(_TRAINED)
