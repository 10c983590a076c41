"""16-bit images are scaled by their real bit depth, never clipped to a white page (issue 13
item 3): grayscale "I;16" and 16-bit RGB, through `smt.data prepare`, the training loader
(what augmentation receives) and prediction's image loading."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import datasets
import numpy as np
import pytest
from PIL import Image

from autotune.errors import run_cli
from smt.data.__main__ import main
from smt.data.images import to_gray8


def _page(raw_dir: Path) -> tuple[np.ndarray, str]:
    row = datasets.load_from_disk(str(raw_dir))["train"][0]
    return np.asarray(row["image"].convert("L"), dtype=np.uint8), row["transcription"]


def _write_16bit(gray8: np.ndarray, folder: Path) -> dict[str, Path]:
    """The same page as 8-bit, 16-bit gray and 16-bit RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    g16 = gray8.astype(np.uint16) * 257                   # 255 -> 65535: the same picture
    paths = {"8bit": folder / "p8.png", "gray16": folder / "p16.png",
             "rgb16": folder / "prgb16.png"}
    Image.fromarray(gray8, "L").save(paths["8bit"])
    Image.fromarray(g16).save(paths["gray16"])
    assert Image.open(paths["gray16"]).mode == "I;16"
    cv2.imwrite(str(paths["rgb16"]), np.dstack([g16, g16, g16]))
    return paths


def test_prepare_scales_16_bit_pages_instead_of_blanking_them(synth_raw_dir: Path, tmp_path: Path) -> None:
    gray8, kern = _page(synth_raw_dir)
    paths = _write_16bit(gray8, tmp_path / "pages" / "train")
    for p in paths.values():
        p.with_suffix(".krn").write_text(kern)
    out = tmp_path / "prepared"
    code = run_cli(main, ["prepare", "--data", str(tmp_path / "pages"), "--reduce-ratio", "1",
                          "--out", str(out)], prog="python -m smt.data")
    assert code == 0
    train = datasets.load_from_disk(str(out))["train"]
    got = [np.asarray(img, dtype=np.int16) for img in train["image"]]
    assert len(got) == 3
    for img in got:
        assert img.min() < 128                            # ink survived: not a white page
        assert np.abs(img - gray8).max() <= 1


@pytest.mark.parametrize("kind", ["gray16", "rgb16"])
def test_loader_and_predict_read_16_bit_like_8_bit(kind: str, synth_raw_dir: Path, tmp_path: Path) -> None:
    from smt.data.loader import image_to_array
    from smt.predict import Predictor

    gray8, _ = _page(synth_raw_dir)
    paths = _write_16bit(gray8, tmp_path)
    # The loader (augmentation's input) gets an undecoded row as datasets stores it.
    loaded = image_to_array({"bytes": paths[kind].read_bytes(), "path": None})
    assert np.abs(loaded.astype(int) - gray8).max() <= 1
    model = SimpleNamespace(config=SimpleNamespace(max_height=10_000, max_width=10_000))
    predictor = Predictor(model, None, "bekern", 1.0, "cpu")
    tensor = predictor.load_image(paths[kind])
    assert float(tensor.min()) < 0.5
    assert np.abs(tensor[0].numpy() * 255 - gray8).max() <= 1.01


@pytest.mark.parametrize("arr, expect", [
    (np.array([[0, 65535]], np.uint16), [0, 255]),
    (np.array([[[0, 0, 0], [65535, 65535, 65535]]], np.uint16), [0, 255]),   # would wrap
    (np.array([[0.0, 1.0]], np.float32), [0, 255]),
    (np.array([[True, False]]), [255, 0]),
    (np.array([[[0, 0, 0, 0], [0, 0, 0, 65535]]], np.uint16), [255, 0]),     # transparent: white
])
def test_arrays_are_scaled_by_their_dtype(arr: np.ndarray, expect: list[int]) -> None:
    assert to_gray8(arr)[0].tolist() == expect
