"""Synthetic scores: valid music, exact tokenizer round trips, every piece renders, CLI works."""
from __future__ import annotations

import io
import re

import datasets
import numpy as np
import pytest
from PIL import Image

from smt.data.__main__ import main
from smt.data.kern_gen import generate, measure_durations, meter_of
from smt.data.render import render
from smt.tokenizer import FORMATS, detokenize, tokenize

SYSTEM_SEEDS = range(40)
PAGE_SEEDS = range(2)


def _pieces():
    return [("system", s) for s in SYSTEM_SEEDS] + [("page", s) for s in PAGE_SEEDS]


@pytest.mark.parametrize("kind,seed", _pieces())
def test_measures_add_up_and_round_trip(kind: str, seed: int) -> None:
    kern = generate(seed, kind)
    meter = meter_of(kern)
    measures = measure_durations(kern)
    assert len(measures) >= 2
    for i, spines in enumerate(measures):
        assert spines == [meter, meter], f"measure {i + 1} of {kind} {seed}: {spines} != {meter}"
    for fmt in FORMATS:
        assert detokenize(tokenize(kern, fmt), fmt) == kern


def test_generator_is_seeded_and_varied() -> None:
    assert generate(5) == generate(5)
    texts = {generate(s) for s in range(20)}
    assert len(texts) == 20
    joined = "\n".join(texts)
    # The features the recogniser must learn all appear in a modest sample.
    for what, pattern in {"tie": r"\[", "beam": r"L", "double beam": r"LL", "chord": r"\S \S",
                          "rest": r"\dr", "dot": r"\d\.", "sharp": r"[a-gA-G]#", "flat": r"[a-gA-G]-",
                          "key": r"\*k\[[a-g]", "3/4 or 6/8": r"\*M(3/4|6/8)"}.items():
        assert re.search(pattern, joined), f"no {what} in 20 generated systems"
    assert any("!!!OTL:" in generate(s, "page") for s in range(6))


@pytest.mark.parametrize("kind,seed", [("system", s) for s in range(12)] + [("page", 0)])
def test_every_piece_renders(kind: str, seed: int) -> None:
    png = render(generate(seed, kind), kind, seed=seed)
    img = Image.open(io.BytesIO(png))
    assert img.mode == "L"
    arr = np.asarray(img)
    assert arr.mean() > 200, "paper should be mostly white"
    assert (arr < 100).mean() > 0.01, "there should be ink"
    if kind == "page":
        assert img.width == 2100
    else:
        assert img.width > img.height


def test_fixture_rows_round_trip(synth_raw_dir) -> None:
    dd = datasets.load_from_disk(str(synth_raw_dir))
    assert {k: len(v) for k, v in dd.items()} == {"train": 16, "val": 4, "test": 4}
    for split in dd.values():
        for text in split["transcription"]:
            for fmt in FORMATS:
                assert detokenize(tokenize(text, fmt), fmt) == text


def test_synth_cli(tmp_path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--count", "10", "--kind", "system",
                 "--seed", "3", "--num-proc", "2"]) == 0
    assert "systems/s" in capsys.readouterr().out
    dd = datasets.load_from_disk(str(out))
    assert {k: len(v) for k, v in dd.items()} == {"train": 8, "val": 1, "test": 1}
    row = dd["train"][0]
    assert row["image"].mode == "L" and row["transcription"].startswith("**kern")
    # Same seed, same data.
    out2 = tmp_path / "ds2"
    assert main(["synth", "--out", str(out2), "--count", "10", "--seed", "3"]) == 0
    assert datasets.load_from_disk(str(out2))["train"]["transcription"] == dd["train"]["transcription"]


def test_synth_from_kern_dir_counts_broken_files(tmp_path, capsys) -> None:
    kdir = tmp_path / "krn"
    kdir.mkdir()
    for i in range(4):
        (kdir / f"p{i}.krn").write_text(generate(100 + i))
    (kdir / "broken.krn").write_bytes(b"\xff\xfe not text")
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--kern-dir", str(kdir), "--val", "1",
                 "--test", "1"]) == 0
    printed = capsys.readouterr().out
    assert "failed: not utf-8 text: 1" in printed
    dd = datasets.load_from_disk(str(out))
    assert sum(len(v) for v in dd.values()) == 4


@pytest.mark.parametrize("argv,message", [
    (["synth", "--out", "X", "--count", "0"], "--count must be at least 1"),
    (["synth", "--out", "X", "--kern-dir", "/nonexistent/krn"], "no such folder"),
])
def test_synth_cli_user_errors(argv, message, tmp_path, capsys) -> None:
    from autotune.errors import run_cli
    argv = [a.replace("X", str(tmp_path / "o")) for a in argv]
    assert run_cli(main, argv, prog="smt.data") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
