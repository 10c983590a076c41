"""The end of a training run: OUT/pictures/, what the trained model reads on a few validation
samples (`smt.pictures`), the picture a user checks first."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from smt.runconfig import DEFAULTS

# How many by default: TrainConfig.pictures (why four is there).
COUNT = DEFAULTS.pictures
FOLDER = "pictures"


def sample_indices(n: int, count: int = COUNT) -> list[int]:
    """`count` indices spread evenly over `n` rows, first and last included: the same rows
    at the end of every run on the same validation set, so pictures compare across runs."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    if n <= count or count == 1:
        return list(range(min(n, count)))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def write_end_of_run(out: Path, model: Any, vocab: Any, fmt: str, val: Any,
                     count: int = COUNT) -> list[Any]:
    """OUT/pictures/val<INDEX>.png for `count` fixed rows of `val` (prepared rows: the image
    as the model reads it, and the transcription), decoded by `model` on the GPU when there
    is one; returns the `smt.pictures.Picture` records. Call it on rank zero only: no collective runs here."""
    from smt.data.rows import decode_gray
    from smt.pictures import Sample, write_pictures
    from smt.predict import Predictor, as_input, resolve_device

    rows = [(i, val[i]) for i in sample_indices(len(val), count)]
    images = [decode_gray(row["image"]) for _, row in rows]
    # Prepared rows are already at the run's reduce ratio: the predictor scales nothing.
    predictor = Predictor(model, vocab, fmt, 1.0, resolve_device(None))
    was_training = model.training
    model.to(predictor.device).eval()
    try:
        texts = predictor.predict([as_input(img) for img in images])
    finally:
        model.train(was_training)
    samples = [Sample(f"val{i}", img, text, row["transcription"])
               for (i, row), img, text in zip(rows, images, texts)]
    return write_pictures(Path(out) / FOLDER, samples, fmt)
