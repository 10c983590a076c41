"""What the model read, as pictures: `smt.pictures`, `smt.predict --render` and the pictures
at the end of a training run."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from autotune.errors import run_cli
from smt import pictures as pic
from smt.data.kern_gen import generate
from smt.data.render import render
from smt.engrave import Engraver
from smt.train.pictures import sample_indices

SYSTEM = generate(3, "system")
OTHER = generate(4, "system")
# verovio aborts the whole process on this one (a record with fewer fields than spines).
CRASHES = "**kern\t**kern\n4c\n*-\t*-"


def _gray(kern: str, kind: str = "system", seed: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render(kern, kind, seed=seed))).convert("L"))


def _resized(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape
    return np.asarray(Image.fromarray(img).resize((width, max(1, round(h * width / w)))))


def _ink(png: Path, box: tuple[int, int, int, int]) -> float:
    """Share of dark pixels of the written picture inside `box`."""
    with Image.open(png) as im:
        return float((np.asarray(im.convert("L").crop(box)) < 128).mean())


# name -> (image, prediction, truth); one write_pictures call (one verovio child) for all.
CASES: dict[str, tuple[np.ndarray, str, str | None]] = {
    "exact": (_gray(SYSTEM, seed=3), SYSTEM, SYSTEM),
    "wrong": (_gray(SYSTEM, seed=3), OTHER, SYSTEM),
    "crash": (_gray(SYSTEM, seed=3), CRASHES, SYSTEM),
    "headless": (_gray(SYSTEM, seed=3), "4c\t4e\n4d\t4f", SYSTEM),
    "empty": (_gray(SYSTEM, seed=3), "", SYSTEM),
    "no_truth": (_gray(SYSTEM, seed=3), SYSTEM, None),
    "tiny": (_resized(_gray(SYSTEM, seed=3), 120), SYSTEM, SYSTEM),
    "huge": (_resized(_gray(SYSTEM, seed=3), 3000), SYSTEM, SYSTEM),
    "page": (_gray(generate(5, "page"), "page", seed=5), generate(5, "page"), None),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pic.Picture]:
    out = tmp_path_factory.mktemp("pictures")
    samples = [pic.Sample(name, img, pred, truth) for name, (img, pred, truth) in CASES.items()]
    return {p.path.stem: p for p in pic.write_pictures(out, samples, "bekern", show_progress=False)}


@pytest.mark.parametrize("name", list(CASES))
def test_every_sample_gets_a_picture_of_sane_size(written: dict[str, pic.Picture],
                                                  name: str) -> None:
    p = written[name]
    with Image.open(p.path) as im:
        assert im.size == p.size
    width, height = p.size
    assert pic.WIDTH_MIN <= width <= pic.WIDTH_MAX
    # Three panels at most, each capped, plus their captions.
    assert 100 < height <= 3 * (pic.PANEL_MAX_HEIGHT + 200)
    for panel in p.panels:
        left, top, right, bottom = panel.box
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert bottom - top <= pic.PANEL_MAX_HEIGHT
    assert [panel.role for panel in p.panels] == (
        ["input", "prediction"] + (["truth"] if CASES[name][2] is not None else []))


@pytest.mark.parametrize("name, width", [("tiny", pic.WIDTH_MIN), ("huge", pic.WIDTH_MAX),
                                         ("exact", CASES["exact"][0].shape[1])])
def test_the_input_is_scaled_to_a_bounded_common_width(written: dict[str, pic.Picture],
                                                       name: str, width: int) -> None:
    assert written[name].size[0] == width
    assert written[name].panel("input").box[2] == width


@pytest.mark.parametrize("name, ser", [("exact", 0.0), ("wrong", None), ("no_truth", None)])
def test_a_valid_kern_is_engraved_with_its_truth_and_the_ser(written: dict[str, pic.Picture],
                                                              name: str, ser: float | None) -> None:
    p = written[name]
    for panel in p.panels:
        assert panel.kind == ("image" if panel.role == "input" else "engraved"), panel
        assert panel.reason is None
        assert _ink(p.path, panel.box) > 0.01, panel        # notes drawn there, not blank
    if name == "no_truth":
        assert p.ser is None and "no SER" in p.title
    elif ser is not None:
        assert p.ser == ser and "SER 0.0%" in p.title
    else:
        assert p.ser is not None and p.ser > 10 and f"SER {p.ser:.1f}%" in p.title


def test_a_short_prediction_is_engraved_at_the_truths_scale(written: dict[str, pic.Picture]) -> None:
    """OTHER has fewer measures than SYSTEM: one scale for both, so it comes out narrower."""
    p = written["wrong"]
    assert p.panel("prediction").box[2] < p.panel("truth").box[2] == p.size[0]


@pytest.mark.parametrize("name, reason", [
    ("crash", "verovio crashed"),
    ("headless", "no **kern header"),
    ("empty", "the kern is empty"),
])
def test_a_kern_that_does_not_engrave_is_text_with_the_reason(written: dict[str, pic.Picture],
                                                               name: str, reason: str) -> None:
    p = written[name]
    pred = p.panel("prediction")
    assert pred.kind == "text" and reason in pred.reason and reason in pred.caption
    assert p.panel("truth").kind == "engraved"          # the truth still engraves
    if CASES[name][1]:
        assert _ink(p.path, pred.box) > 0.001           # the kern's text is drawn there


def test_a_crash_names_the_line_and_the_next_engraving_works() -> None:
    with Engraver() as engraver:
        crashed = engraver.engrave(CRASHES)
        assert crashed.image is None and "line 2" in crashed.reason
        assert engraver.engrave(SYSTEM).image is not None     # a fresh child took over


@pytest.mark.parametrize("image, kind", [((370, 1270), "system"), ((2970, 2100), "page"),
                                         ((600, 1000), "system"), ((700, 1000), "page")])
def test_pages_engrave_as_pages(image: tuple[int, int], kind: str) -> None:
    assert pic.engraving_kind(np.zeros(image, np.uint8)) == kind


def test_a_page_is_engraved_within_the_height_cap(written: dict[str, pic.Picture]) -> None:
    p = written["page"]
    assert p.panel("prediction").kind == "engraved"
    assert max(b - t for _, t, _, b in (panel.box for panel in p.panels)) <= pic.PANEL_MAX_HEIGHT


@pytest.mark.parametrize("n, count, expected", [
    (0, 4, []), (2, 4, [0, 1]), (4, 4, [0, 1, 2, 3]), (5, 4, [0, 1, 3, 4]),
    (100, 4, [0, 33, 66, 99]), (10, 1, [0]),
])
def test_end_of_run_samples_are_fixed_and_spread(n: int, count: int, expected: list[int]) -> None:
    assert sample_indices(n, count) == expected


# --- through the real command lines (a tiny trained model) ---------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_render_writes_a_picture_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from test_predict import _train_images
    from tiny_scores import trained_run

    from smt.predict import main
    images = _train_images(tmp_path)
    (truth_image, truth), (bare_image, _) = images[0], images[1]
    truth_image.with_suffix(".krn").write_text(truth + "\n")   # the truth beside one image
    ckpt = trained_run() / "checkpoints" / "last.ckpt"
    records: list[Any] = []
    real = pic.write_pictures

    def spy(*args: Any, **kwargs: Any) -> list[pic.Picture]:    # the real one, records kept
        result = real(*args, **kwargs)
        records.extend(result)
        return result

    monkeypatch.setattr(pic, "write_pictures", spy)
    capsys.readouterr()
    render_dir = tmp_path / "pictures"
    assert run_cli(main, ["--checkpoint", str(ckpt), str(truth_image), str(bare_image),
                          "--render", str(render_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.count("**kern") >= 2                        # the kern is still printed
    for image in (truth_image, bare_image):
        assert f"{image} -> {render_dir / (image.stem + '.png')}" in err
        assert (render_dir / f"{image.stem}.png").is_file()
    by_name = {r.path.stem: r for r in records}
    with_truth, bare = by_name[truth_image.stem], by_name[bare_image.stem]
    # The memorised system comes back exactly: engraved, truth engraved, SER 0.
    assert [p.kind for p in with_truth.panels] == ["image", "engraved", "engraved"]
    assert with_truth.ser == 0.0
    assert [p.role for p in bare.panels] == ["input", "prediction"] and bare.ser is None
    # A second run replaces its own folder; an --out on the same folder is refused.
    assert run_cli(main, ["--checkpoint", str(ckpt), str(bare_image),
                          "--render", str(render_dir)]) == 0
    assert sorted(p.name for p in render_dir.glob("*.png")) == [f"{bare_image.stem}.png"]
    capsys.readouterr()
    assert run_cli(main, ["--checkpoint", str(ckpt), str(bare_image), "--render",
                          str(render_dir), "--out", str(render_dir)], prog="smt.predict") == 2
    assert "overlap" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_training_run_ends_with_pictures_of_validation_samples() -> None:
    from tiny_scores import trained_run
    folder = trained_run() / "pictures"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == ["val0.png", "val1.png"]               # the 2 validation rows of the run
    for name in names:
        with Image.open(folder / name) as im:
            assert pic.WIDTH_MIN <= im.width <= pic.WIDTH_MAX and im.height > 200


def test_a_prediction_of_blank_lines_is_said_not_drawn_as_a_blank_page() -> None:
    """An untrained model often emits nothing but line breaks: the panel says so in one line
    (it drew 60 blank lines and '... N more lines' before), and the reason is not 'empty'."""
    blank = "\n" * 500
    with Engraver() as engraver:
        reason = engraver.engrave(blank).reason
    assert "only blank space" in reason
    panel = pic.kern_as_text(blank, 800)
    assert panel.height < 3 * pic.FONT_PX and pic.kern_as_text("x\n" * 500, 800).height > 20 * pic.FONT_PX
