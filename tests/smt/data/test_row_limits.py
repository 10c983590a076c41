"""Unbounded input never reaches the model (issue 13 items 6, 7), through `smt.data prepare`:
an over-long transcription and an over-large image are skipped and counted with the reason;
header-only and layout-only transcriptions count as empty; transcriptions without an image
are counted as orphans; skip reports name the source file."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from autotune.errors import run_cli
from smt.data.__main__ import main
from smt.data.prepconfig import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TOKENS, PrepareConfig


def _folder(raw_dir: Path, root: Path) -> Path:
    folder = root / "pages"
    (folder / "train").mkdir(parents=True)
    train = datasets.load_from_disk(str(raw_dir))["train"]
    for i in range(3):
        train[i]["image"].save(folder / "train" / f"ok{i}.png")
        (folder / "train" / f"ok{i}.krn").write_text(train[i]["transcription"])
    good = (folder / "train" / "ok0.png").read_bytes()
    texts = {"long": "**kern\n" + "4c\n" * (DEFAULT_MAX_TOKENS // 2) + "*-",
             "header": "**kern\n*-\n",
             "layout": "**kern\t**kern\n*clefF4\t*clefG2\n*M4/4\t*M4/4\n=1\t=1\n.\t.\n*-\t*-\n"}
    for stem, text in texts.items():
        (folder / "train" / f"{stem}.png").write_bytes(good)
        (folder / "train" / f"{stem}.krn").write_text(text)
    # 6000 x 4500 px: above an A4 page at 300 dpi even before any reduction.
    Image.fromarray(np.full((4500, 6000), 255, np.uint8)).save(folder / "train" / "huge.png")
    (folder / "train" / "huge.krn").write_text(train[0]["transcription"])
    (folder / "train" / "lonely.krn").write_text(train[1]["transcription"])   # no image
    return folder


def test_long_large_empty_and_orphan_rows_are_counted_by_file(
        synth_raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(synth_raw_dir, tmp_path)
    out = tmp_path / "prepared"
    capsys.readouterr()
    code = run_cli(main, ["prepare", "--data", str(folder), "--reduce-ratio", "1", "--out",
                          str(out)], prog="python -m smt.data")
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = " ".join(printed.split())                        # rich wraps long lines
    assert "transcription too long: 1" in text and "long.png" in text
    assert "image too large: 1" in text and "huge.png" in text
    assert "empty transcription: 2" in text
    assert "orphans: 1" in text and "lonely.krn" in text
    assert "--max-tokens" in text and "--max-image-area" in text
    kept = datasets.load_from_disk(str(out))["train"]
    assert len(kept) == 3
    assert max(im.width * im.height for im in kept["image"]) <= DEFAULT_MAX_IMAGE_PIXELS


def test_the_limits_are_flags(synth_raw_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(synth_raw_dir, tmp_path)
    capsys.readouterr()
    assert run_cli(main, ["prepare", "--data", str(folder), "--reduce-ratio", "0.25",
                          "--max-tokens", "100000", "--max-image-area", "2000000"],
                   prog="python -m smt.data") == 0
    text = " ".join(capsys.readouterr().out.split())
    # 6000x4500 at 0.25 is 1500x1125 px: kept; the long score is kept under the raised bound.
    assert "too long" not in text and "too large" not in text and "kept 5 of 7" in text


def test_the_default_bounds_are_what_the_reference_model_derives() -> None:
    from smt.data.limits import row_limits
    limits = row_limits()
    assert (limits.max_tokens, limits.max_image_pixels) == (DEFAULT_MAX_TOKENS,
                                                            DEFAULT_MAX_IMAGE_PIXELS)
    cfg = PrepareConfig()
    assert (cfg.max_tokens, cfg.max_image_pixels) == (DEFAULT_MAX_TOKENS, DEFAULT_MAX_IMAGE_PIXELS)
    # A smaller memory budget lowers the token bound (one sample must fit at batch 1).
    assert row_limits(memory_budget_bytes=3 * 2**30).max_tokens < DEFAULT_MAX_TOKENS


def test_the_probe_does_not_size_the_model_for_a_row_training_skips(
        synth_raw_dir: Path, tmp_path: Path) -> None:
    from smt.workload import SMTWorkload
    folder = _folder(synth_raw_dir, tmp_path)
    extent = SMTWorkload(data=str(folder), preset="debug").extent()
    assert extent.max_seq_len_tokens <= DEFAULT_MAX_TOKENS
